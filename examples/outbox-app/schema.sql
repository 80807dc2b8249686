-- The example's tables: orders, and the outbox their events go through.
set client_min_messages = warning;
create table if not exists orders (
    id bigserial primary key,
    customer text not null,
    total numeric(12, 2) not null,
    created_at timestamptz not null default now()
);

create table if not exists outbox (
    id bigserial primary key,               -- increasing: the polling source reads in id order
    aggregate_type text not null,           -- the topic (default template {event.aggregate_type})
    aggregate_id text not null,             -- the message key: one order's events stay in order
    type text not null,
    payload jsonb not null,
    headers jsonb
);
