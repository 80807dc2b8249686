#!/bin/sh
# Place orders the transactional-outbox way: each order and its `order_placed` event are
# written in one transaction, so the event exists exactly when the order does. With
# DELETE_AFTER=1 the outbox row is deleted in the same transaction (the recipe for
# `delete_after_capture: true`: the insert is still in the WAL, the table stays empty).
# Every fifth order is rolled back: its event is never published.
#
#   DATABASE_URL=postgres://sluice:secret@127.0.0.1:5432/app ./place-orders.sh [COUNT]
set -eu

: "${DATABASE_URL:?set DATABASE_URL, e.g. postgres://sluice:secret@127.0.0.1:5432/app}"
count="${1:-10}"
here="$(cd "$(dirname "$0")" && pwd)"

psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -q -f "$here/schema.sql"

i=1
while [ "$i" -le "$count" ]; do
    customer="customer-$((i % 3))"
    if [ $((i % 5)) -eq 0 ]; then ending=rollback; else ending=commit; fi
    if [ "${DELETE_AFTER:-0}" = 1 ]; then
        cleanup="delete from outbox where id = :event_id;"
    else
        cleanup=""
    fi
    total="$i.50"
    psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -q <<SQL
begin;
insert into orders (customer, total) values ('$customer', $total) returning id as order_id \gset
insert into outbox (aggregate_type, aggregate_id, type, payload, headers)
values ('order', :'order_id', 'order_placed',
        jsonb_build_object('order_id', :order_id, 'customer', '$customer', 'total', $total),
        '{"source": "outbox-app"}')
returning id as event_id \gset
$cleanup
$ending;
SQL
    echo "order $i: $ending"
    i=$((i + 1))
done
