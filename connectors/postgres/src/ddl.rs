//! Schema changes in the stream: a DDL event trigger that writes a transactional logical
//! message (prefix `sluice.ddl`) in the DDL's own transaction, the message's content, and
//! the `schema_change` envelope made from it.
//!
//! Logical decoding sends no DDL. What it does send is enough to *apply* rows (a Relation
//! message before the first row of a new shape) but not to *notice* a change: a table
//! dropped and created again silently leaves the publication, and nothing says when. The
//! trigger fills that gap: for every `CREATE TABLE`, `ALTER TABLE` (renames and moves to
//! another schema included) and `DROP TABLE` it emits the table's OID, its name and its
//! columns after the change, at the DDL's exact place in the WAL. The source uses it to
//! follow renames, to date a drop, to re-add a table created again, and (with
//! `ddl_events: true`) to deliver the change as an event.
//!
//! Creating an event trigger takes a superuser. The trigger serves every pipeline of the
//! database and never makes the application's DDL fail (errors become warnings). Without
//! it, sluice detects renames from Relation messages and drops from a periodic check of
//! the publication ([`crate::publication`]).

use serde::{Deserialize, Serialize};
use sluice_runtime::{Event, Message, Op, Position, Row, Source, Value};
use tokio_postgres::Client;

use crate::setup::{query_err, SetupError};

/// Logical message prefixes starting with this are sluice's own: never delivered as user
/// messages, refused in `messages:`.
pub const RESERVED_PREFIX: &str = "sluice.";
/// The prefix of the trigger's messages.
pub const DDL_PREFIX: &str = "sluice.ddl";
/// The `event.type` of a schema change envelope.
pub const SCHEMA_CHANGE: &str = "schema_change";

/// The trigger function and the two event triggers; idempotent. OIDs are cast to `bigint`:
/// `json_build_object` writes an `oid` as a JSON string.
const INSTALL: &str = r#"
CREATE OR REPLACE FUNCTION public.sluice_ddl_message() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $sluice$
DECLARE
  r record;
BEGIN
  IF tg_event = 'sql_drop' THEN
    FOR r IN
      SELECT d.objid, d.schema_name, d.object_name
        FROM pg_event_trigger_dropped_objects() d
       WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND d.object_type = 'table'
    LOOP
      PERFORM pg_logical_emit_message(true, 'sluice.ddl', json_build_object(
        'command_tag', tg_tag, 'objid', r.objid::bigint, 'schema', r.schema_name,
        'table', r.object_name, 'object_identity', format('%I.%I', r.schema_name, r.object_name),
        'columns', json_build_array())::text);
    END LOOP;
  ELSE
    FOR r IN
      SELECT DISTINCT d.objid, d.command_tag
        FROM pg_event_trigger_ddl_commands() d
        JOIN pg_class c ON c.oid = d.objid
       WHERE d.classid = 'pg_class'::regclass AND c.relkind IN ('r', 'p')
    LOOP
      PERFORM pg_logical_emit_message(true, 'sluice.ddl', json_build_object(
        'command_tag', r.command_tag, 'objid', c.oid::bigint, 'schema', n.nspname, 'table', c.relname,
        'object_identity', format('%I.%I', n.nspname, c.relname),
        'columns', coalesce((
          SELECT json_agg(json_build_object(
                   'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
                   'nullable', NOT a.attnotnull,
                   'key', coalesce(a.attnum = ANY (i.indkey), false)) ORDER BY a.attnum)
            FROM pg_attribute a
            LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'::json))::text)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.oid = r.objid;
    END LOOP;
  END IF;
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING 'sluice: cannot record a schema change for change data capture: %', SQLERRM;
END
$sluice$;
DO $sluice$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'sluice_ddl_command_end') THEN
    CREATE EVENT TRIGGER sluice_ddl_command_end ON ddl_command_end
      EXECUTE PROCEDURE public.sluice_ddl_message();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'sluice_ddl_sql_drop') THEN
    CREATE EVENT TRIGGER sluice_ddl_sql_drop ON sql_drop
      EXECUTE PROCEDURE public.sluice_ddl_message();
  END IF;
END
$sluice$;
"#;

/// What removes the trigger; `teardown` leaves it (it serves every pipeline of the
/// database) and prints this for when no pipeline is left.
pub const UNINSTALL: &str = "DROP EVENT TRIGGER IF EXISTS sluice_ddl_command_end; \
     DROP EVENT TRIGGER IF EXISTS sluice_ddl_sql_drop; \
     DROP FUNCTION IF EXISTS public.sluice_ddl_message();";

/// Whether the DDL event trigger is in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Both event triggers exist and are enabled.
    Installed,
    /// Absent, and this role may not create it: the SQL for an administrator.
    Missing { sql: String },
}

impl Trigger {
    pub fn is_installed(&self) -> bool {
        *self == Trigger::Installed
    }
}

/// Install (or update) the trigger when the role is a superuser; otherwise say whether
/// an administrator installed it, with the SQL to do so when not.
pub async fn ensure_trigger(client: &Client) -> Result<Trigger, SetupError> {
    let superuser: bool = client
        .query_one(
            "select rolsuper from pg_roles where rolname = current_user",
            &[],
        )
        .await
        .map_err(query_err("reading the role"))?
        .get(0);
    if superuser {
        match client.batch_execute(INSTALL).await {
            Ok(()) => return Ok(Trigger::Installed),
            // Another pipeline created it at the same moment.
            Err(e) if e.code().is_some_and(|c| c.code() == "42710") => {}
            Err(e) => return Err(query_err("installing the DDL event trigger")(e)),
        }
    }
    trigger(client).await
}

/// Whether the trigger is in place (read-only).
pub async fn trigger(client: &Client) -> Result<Trigger, SetupError> {
    let enabled: i64 = client
        .query_one(
            "select count(*) from pg_event_trigger
              where evtname in ('sluice_ddl_command_end', 'sluice_ddl_sql_drop')
                and evtenabled <> 'D'",
            &[],
        )
        .await
        .map_err(query_err("looking up the DDL event trigger"))?
        .get(0);
    Ok(match enabled {
        2 => Trigger::Installed,
        _ => Trigger::Missing {
            sql: INSTALL.trim().to_string(),
        },
    })
}

/// One schema change, as the trigger describes it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct DdlCommand {
    /// `CREATE TABLE`, `ALTER TABLE`, `DROP TABLE`, ...
    pub command_tag: String,
    /// The table's OID.
    pub objid: u32,
    /// Its schema and name after the change (before it, for a drop).
    pub schema: String,
    pub table: String,
    /// `schema.table`, quoted where needed.
    pub object_identity: String,
    /// Its columns after the change (none for a drop).
    #[serde(default)]
    pub columns: Vec<DdlColumn>,
}

/// A column of a table after a schema change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DdlColumn {
    pub name: String,
    /// The type as SQL writes it (`integer`, `character varying(20)`, `text[]`).
    #[serde(rename = "type")]
    pub kind: String,
    pub nullable: bool,
    /// Part of the primary key.
    pub key: bool,
}

impl DdlCommand {
    /// Read a `sluice.ddl` message's content; `None` when it is not one this build wrote.
    pub fn parse(content: &[u8]) -> Option<Self> {
        serde_json::from_slice(content).ok()
    }

    pub fn is_drop(&self) -> bool {
        self.command_tag == "DROP TABLE"
    }

    pub fn is_create(&self) -> bool {
        self.command_tag.starts_with("CREATE")
    }

    /// The `schema_change` envelope of this command at `position`: `event.type`
    /// `schema_change`, `aggregate_type` `table`, `aggregate_id` the object identity, and a
    /// payload with the command tag, the object identity and the column list.
    pub fn event(&self, position: Position, source: Source) -> Event {
        let identity = Value::Text(self.object_identity.clone());
        let payload = serde_json::json!({
            "command_tag": self.command_tag,
            "object_identity": self.object_identity,
            "columns": self.columns,
        });
        let mut e = Event::new(position, Op::Event, source);
        let mut key = Row::default();
        key.push("aggregate_id".into(), identity.clone());
        e.key = Some(key);
        e.message = Some(Message {
            id: Value::Text(position.to_string()),
            kind: Value::Text(SCHEMA_CHANGE.into()),
            aggregate_type: Value::Text("table".into()),
            aggregate_id: identity,
            payload: Value::json(&payload.to_string()).unwrap_or(Value::Null),
            headers: Value::Null,
        });
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_runtime::Lsn;

    #[test]
    fn a_trigger_message_becomes_a_schema_change_envelope() {
        let content = br#"{"command_tag": "ALTER TABLE", "objid": 16384, "schema": "public",
            "table": "orders", "object_identity": "public.orders",
            "columns": [{"name": "id", "type": "integer", "nullable": false, "key": true},
                        {"name": "note", "type": "text", "nullable": true, "key": false}]}"#;
        let cmd = DdlCommand::parse(content).expect("parses");
        assert!(!cmd.is_drop() && !cmd.is_create());
        let source = Source {
            pipeline: "p".into(),
            schema: Some("public".into()),
            table: Some("orders".into()),
            lsn: Lsn(0x10),
            commit_lsn: Lsn(0x20),
            xid: Some(7),
            ts_micros: 0,
        };
        let e = cmd.event(Position::new(Lsn(0x20), 3), source);
        let json: serde_json::Value = serde_json::from_slice(e.json()).unwrap();
        assert_eq!(json["op"], "event");
        assert_eq!(json["source"]["table"], "orders");
        assert_eq!(
            json["event"],
            serde_json::json!({
                "id": "0/20:3",
                "type": "schema_change",
                "aggregate_type": "table",
                "aggregate_id": "public.orders",
                "payload": {
                    "command_tag": "ALTER TABLE",
                    "object_identity": "public.orders",
                    "columns": [
                        {"name": "id", "type": "integer", "nullable": false, "key": true},
                        {"name": "note", "type": "text", "nullable": true, "key": false}
                    ]
                },
                "headers": null
            })
        );
    }

    #[test]
    fn drops_and_foreign_content() {
        let drop = DdlCommand::parse(
            br#"{"command_tag": "DROP TABLE", "objid": 1, "schema": "s", "table": "t",
                 "object_identity": "s.t", "columns": []}"#,
        )
        .unwrap();
        assert!(drop.is_drop());
        assert_eq!(DdlCommand::parse(b"not json"), None);
        assert_eq!(DdlCommand::parse(br#"{"command_tag": "X"}"#), None);
    }
}
