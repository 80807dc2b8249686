-- The application's one table: sluice captures it into the Redis cache as `orders:<id>`.
create table if not exists orders (
    id         bigserial primary key,
    customer   text not null,
    total      numeric(12, 2) not null,
    created_at timestamptz not null default now()
);
