//! Postgres type OIDs and how their text form converts to a [`sluice_runtime::Value`].
//!
//! [`TypeRegistry::builtin`] knows the built-in scalar types and their arrays. User-defined
//! types (domains, enums, arrays of them, extension types) are looked up in `pg_type` once
//! with [`TypeRegistry::resolve`] and cached.

use std::collections::HashMap;
use std::fmt;

/// How the text form of a type converts. See [`crate::values::convert`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    /// int2, int4, int8.
    Int,
    /// float4, float8.
    Float,
    Numeric,
    /// Any string type, uuid and enums.
    Text,
    /// json, jsonb.
    Json,
    Bytea,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    /// An array of `element`, its items separated by `delimiter` in the text form.
    Array {
        element: Box<Kind>,
        delimiter: u8,
    },
    /// Anything else: carried as its text form.
    Other,
}

impl Kind {
    /// An array of `element` with the usual `,` delimiter.
    pub fn array_of(element: Kind) -> Kind {
        Kind::Array {
            element: Box::new(element),
            delimiter: b',',
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Kind::Bool => "bool",
            Kind::Int => "integer",
            Kind::Float => "float",
            Kind::Numeric => "numeric",
            Kind::Text => "text",
            Kind::Json => "json",
            Kind::Bytea => "bytea",
            Kind::Date => "date",
            Kind::Time => "time",
            Kind::TimeTz => "timetz",
            Kind::Timestamp => "timestamp",
            Kind::TimestampTz => "timestamptz",
            Kind::Array { element, .. } => return write!(f, "{element}[]"),
            Kind::Other => "text-form",
        };
        f.write_str(name)
    }
}

/// Built-in scalar types: (oid, array oid, kind, array delimiter).
const BUILTIN: &[(u32, u32, Kind, u8)] = {
    use Kind::*;
    &[
        (16, 1000, Bool, b','),          // bool
        (17, 1001, Bytea, b','),         // bytea
        (18, 1002, Text, b','),          // "char"
        (19, 1003, Text, b','),          // name
        (20, 1016, Int, b','),           // int8
        (21, 1005, Int, b','),           // int2
        (22, 1006, Other, b','),         // int2vector
        (23, 1007, Int, b','),           // int4
        (24, 1008, Other, b','),         // regproc
        (25, 1009, Text, b','),          // text
        (26, 1028, Other, b','),         // oid
        (27, 1010, Other, b','),         // tid
        (28, 1011, Other, b','),         // xid
        (29, 1012, Other, b','),         // cid
        (30, 1013, Other, b','),         // oidvector
        (114, 199, Json, b','),          // json
        (142, 143, Other, b','),         // xml
        (5069, 271, Other, b','),        // xid8
        (600, 1017, Other, b','),        // point
        (601, 1018, Other, b','),        // lseg
        (602, 1019, Other, b','),        // path
        (603, 1020, Other, b';'),        // box
        (604, 1027, Other, b','),        // polygon
        (628, 629, Other, b','),         // line
        (700, 1021, Float, b','),        // float4
        (701, 1022, Float, b','),        // float8
        (718, 719, Other, b','),         // circle
        (790, 791, Other, b','),         // money
        (829, 1040, Other, b','),        // macaddr
        (869, 1041, Other, b','),        // inet
        (650, 651, Other, b','),         // cidr
        (774, 775, Other, b','),         // macaddr8
        (1033, 1034, Other, b','),       // aclitem
        (1042, 1014, Text, b','),        // bpchar
        (1043, 1015, Text, b','),        // varchar
        (1082, 1182, Date, b','),        // date
        (1083, 1183, Time, b','),        // time
        (1114, 1115, Timestamp, b','),   // timestamp
        (1184, 1185, TimestampTz, b','), // timestamptz
        (1186, 1187, Other, b','),       // interval
        (1266, 1270, TimeTz, b','),      // timetz
        (1560, 1561, Other, b','),       // bit
        (1562, 1563, Other, b','),       // varbit
        (1700, 1231, Numeric, b','),     // numeric
        (1790, 2201, Text, b','),        // refcursor
        (2202, 2207, Other, b','),       // regprocedure
        (2203, 2208, Other, b','),       // regoper
        (2204, 2209, Other, b','),       // regoperator
        (2205, 2210, Other, b','),       // regclass
        (4191, 4192, Other, b','),       // regcollation
        (2206, 2211, Other, b','),       // regtype
        (4096, 4097, Other, b','),       // regrole
        (4089, 4090, Other, b','),       // regnamespace
        (2950, 2951, Text, b','),        // uuid
        (3220, 3221, Other, b','),       // pg_lsn
        (3614, 3643, Other, b','),       // tsvector
        (3642, 3644, Other, b','),       // gtsvector
        (3615, 3645, Other, b','),       // tsquery
        (3734, 3735, Other, b','),       // regconfig
        (3769, 3770, Other, b','),       // regdictionary
        (3802, 3807, Json, b','),        // jsonb
        (4072, 4073, Other, b','),       // jsonpath
        (2970, 2949, Other, b','),       // txid_snapshot
        (5038, 5039, Other, b','),       // pg_snapshot
        (3904, 3905, Other, b','),       // int4range
        (3906, 3907, Other, b','),       // numrange
        (3908, 3909, Other, b','),       // tsrange
        (3910, 3911, Other, b','),       // tstzrange
        (3912, 3913, Other, b','),       // daterange
        (3926, 3927, Other, b','),       // int8range
        (4451, 6150, Other, b','),       // int4multirange
        (4532, 6151, Other, b','),       // nummultirange
        (4533, 6152, Other, b','),       // tsmultirange
        (4534, 6153, Other, b','),       // tstzmultirange
        (4535, 6155, Other, b','),       // datemultirange
        (4536, 6157, Other, b','),       // int8multirange
        (2275, 1263, Other, b','),       // cstring
        (2249, 2287, Other, b','),       // record
    ]
};

/// Type OID → [`Kind`], for the built-in types and whatever was resolved from the catalog.
#[derive(Clone, Debug)]
pub struct TypeRegistry {
    kinds: HashMap<u32, Kind>,
}

impl Default for TypeRegistry {
    fn default() -> Self {
        Self::builtin()
    }
}

/// How deep [`TypeRegistry::resolve`] follows domains and array elements before giving up.
const MAX_RESOLVE_DEPTH: usize = 32;

impl TypeRegistry {
    /// A registry that knows every built-in scalar type and its array type.
    pub fn builtin() -> Self {
        let mut kinds = HashMap::with_capacity(BUILTIN.len() * 2);
        for (oid, array_oid, kind, delimiter) in BUILTIN {
            kinds.insert(*oid, kind.clone());
            kinds.insert(
                *array_oid,
                Kind::Array {
                    element: Box::new(kind.clone()),
                    delimiter: *delimiter,
                },
            );
        }
        TypeRegistry { kinds }
    }

    /// The kind of a type; `None` when it is unknown and must be [`resolve`](Self::resolve)d.
    pub fn kind(&self, oid: u32) -> Option<&Kind> {
        self.kinds.get(&oid)
    }

    /// Record the kind of a type.
    pub fn insert(&mut self, oid: u32, kind: Kind) {
        self.kinds.insert(oid, kind);
    }

    /// Look a type up in `pg_type`, following domains to their base type and arrays to
    /// their element type, and cache every type visited. Domains convert as their base
    /// type, enums as text, arrays by their element's rules; anything else is
    /// [`Kind::Other`]. A type missing from the catalog (dropped since) is `Other`.
    pub async fn resolve(
        &mut self,
        client: &tokio_postgres::Client,
        oid: u32,
    ) -> Result<Kind, tokio_postgres::Error> {
        enum Step {
            Domain(u32),
            Array(u32, u8),
        }
        let mut steps = Vec::new();
        let mut current = oid;
        let mut kind = loop {
            if let Some(kind) = self.kinds.get(&current) {
                break kind.clone();
            }
            if steps.len() >= MAX_RESOLVE_DEPTH {
                tracing::warn!(oid, "type nesting too deep; carrying values as text");
                break Kind::Other;
            }
            let row = client
                .query_opt(
                    "select typtype, typelem, typbasetype, typdelim, typcategory \
                     from pg_catalog.pg_type where oid = $1::oid",
                    &[&current],
                )
                .await?;
            let Some(row) = row else {
                tracing::warn!(
                    oid = current,
                    "type not found in pg_type; carrying values as text"
                );
                break Kind::Other;
            };
            let typtype = row.try_get::<_, i8>(0)? as u8;
            let typelem: u32 = row.try_get(1)?;
            let typbasetype: u32 = row.try_get(2)?;
            let typdelim = row.try_get::<_, i8>(3)? as u8;
            let typcategory = row.try_get::<_, i8>(4)? as u8;
            match (typtype, typcategory) {
                (b'd', _) if typbasetype != 0 => {
                    steps.push(Step::Domain(current));
                    current = typbasetype;
                }
                (b'e', _) => {
                    self.kinds.insert(current, Kind::Text);
                    break Kind::Text;
                }
                (_, b'A') if typelem != 0 => {
                    steps.push(Step::Array(current, typdelim));
                    current = typelem;
                }
                _ => {
                    self.kinds.insert(current, Kind::Other);
                    break Kind::Other;
                }
            }
        };
        for step in steps.into_iter().rev() {
            match step {
                Step::Domain(oid) => {
                    self.kinds.insert(oid, kind.clone());
                }
                Step::Array(oid, delimiter) => {
                    kind = Kind::Array {
                        element: Box::new(kind),
                        delimiter,
                    };
                    self.kinds.insert(oid, kind.clone());
                }
            }
        }
        Ok(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_scalars() {
        let r = TypeRegistry::builtin();
        let cases = [
            (16, Kind::Bool),
            (17, Kind::Bytea),
            (18, Kind::Text),
            (19, Kind::Text),
            (20, Kind::Int),
            (21, Kind::Int),
            (23, Kind::Int),
            (25, Kind::Text),
            (114, Kind::Json),
            (3802, Kind::Json),
            (700, Kind::Float),
            (701, Kind::Float),
            (1700, Kind::Numeric),
            (1042, Kind::Text),
            (1043, Kind::Text),
            (2950, Kind::Text),
            (1082, Kind::Date),
            (1083, Kind::Time),
            (1266, Kind::TimeTz),
            (1114, Kind::Timestamp),
            (1184, Kind::TimestampTz),
            (1186, Kind::Other),
            (790, Kind::Other),
            (869, Kind::Other),
            (26, Kind::Other),
            (142, Kind::Other),
            (3614, Kind::Other),
            (3904, Kind::Other),
        ];
        for (oid, kind) in cases {
            assert_eq!(r.kind(oid), Some(&kind), "oid {oid}");
        }
        assert_eq!(r.kind(16385), None);
    }

    #[test]
    fn builtin_arrays() {
        let r = TypeRegistry::builtin();
        let cases = [
            (1000, Kind::Bool),
            (1001, Kind::Bytea),
            (1005, Kind::Int),
            (1007, Kind::Int),
            (1016, Kind::Int),
            (1009, Kind::Text),
            (199, Kind::Json),
            (3807, Kind::Json),
            (1021, Kind::Float),
            (1022, Kind::Float),
            (1231, Kind::Numeric),
            (1014, Kind::Text),
            (1015, Kind::Text),
            (2951, Kind::Text),
            (1182, Kind::Date),
            (1183, Kind::Time),
            (1270, Kind::TimeTz),
            (1115, Kind::Timestamp),
            (1185, Kind::TimestampTz),
            (1187, Kind::Other),
        ];
        for (oid, element) in cases {
            assert_eq!(r.kind(oid), Some(&Kind::array_of(element)), "oid {oid}");
        }
        assert_eq!(
            r.kind(1020),
            Some(&Kind::Array {
                element: Box::new(Kind::Other),
                delimiter: b';'
            })
        );
    }

    #[test]
    fn kinds_display_for_errors() {
        assert_eq!(Kind::array_of(Kind::Int).to_string(), "integer[]");
        assert_eq!(Kind::TimestampTz.to_string(), "timestamptz");
    }

    /// Resolves user-defined types against a live server:
    /// `SLUICE_TEST_PG_URL=host=127.0.0.1 port=5432 user=postgres cargo test -- --ignored`
    #[tokio::test]
    #[ignore = "needs a Postgres server: set SLUICE_TEST_PG_URL"]
    async fn resolves_user_defined_types_from_the_catalog() {
        let url = std::env::var("SLUICE_TEST_PG_URL").expect("SLUICE_TEST_PG_URL");
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let schema = format!("sluice_types_test_{}", std::process::id());
        client
            .batch_execute(&format!(
                "drop schema if exists {schema} cascade; create schema {schema};
                 set search_path = {schema};
                 create type mood as enum ('happy', 'sad');
                 create domain posint as int4 check (value > 0);
                 create domain small_posint as posint;
                 create domain ints as int4[];
                 create domain stamp as timestamptz;
                 create type pair as (a int, b text);
                 create type floatrange as range (subtype = float8);"
            ))
            .await
            .unwrap();
        let oid = |name: &'static str| {
            let client = &client;
            async move {
                let row = client
                    .query_one("select $1::text::regtype::oid", &[&name])
                    .await
                    .unwrap();
                row.get::<_, u32>(0)
            }
        };
        let mut r = TypeRegistry::builtin();
        let cases = [
            ("mood", Kind::Text),
            ("mood[]", Kind::array_of(Kind::Text)),
            ("posint", Kind::Int),
            ("small_posint", Kind::Int),
            ("small_posint[]", Kind::array_of(Kind::Int)),
            ("ints", Kind::array_of(Kind::Int)),
            ("ints[]", Kind::array_of(Kind::array_of(Kind::Int))),
            ("stamp[]", Kind::array_of(Kind::TimestampTz)),
            ("pair", Kind::Other),
            ("pair[]", Kind::array_of(Kind::Other)),
            ("floatrange", Kind::Other),
        ];
        for (name, expect) in cases {
            let oid = oid(name).await;
            assert_eq!(r.kind(oid), None, "{name} known before resolving");
            assert_eq!(r.resolve(&client, oid).await.unwrap(), expect, "{name}");
            assert_eq!(r.kind(oid), Some(&expect), "{name} not cached");
        }
        // The domain behind an array was cached on the way.
        assert_eq!(r.kind(oid("mood").await), Some(&Kind::Text));
        assert_eq!(
            r.resolve(&client, 4_000_000_000).await.unwrap(),
            Kind::Other
        );

        // The text forms of the session settings convert end to end.
        client
            .batch_execute(
                "set datestyle = 'ISO, YMD'; set timezone = 'UTC'; set extra_float_digits = 3;
                 set bytea_output = hex; set intervalstyle = iso_8601;",
            )
            .await
            .unwrap();
        let row = client
            .query_one(
                "select array['{1,2}'::ints, '{}', null]::ints[]::text,
                        array['happy', null]::mood[]::text,
                        '0044-03-15 10:00:00+00 BC'::stamp::text,
                        '[0:1]={\"a b\",NULL}'::text[]::text",
                &[],
            )
            .await
            .unwrap();
        let text = |i: usize| row.get::<_, String>(i);
        let ints_arr = r.kind(oid("ints[]").await).unwrap().clone();
        assert_eq!(
            crate::values::convert(&ints_arr, text(0).as_bytes()).unwrap(),
            sluice_runtime::Value::Array(vec![
                sluice_runtime::Value::Array(vec![
                    sluice_runtime::Value::Int(1),
                    sluice_runtime::Value::Int(2)
                ]),
                sluice_runtime::Value::Array(vec![]),
                sluice_runtime::Value::Null,
            ])
        );
        let moods = r.kind(oid("mood[]").await).unwrap().clone();
        assert_eq!(
            crate::values::convert(&moods, text(1).as_bytes()).unwrap(),
            sluice_runtime::Value::Array(vec![
                sluice_runtime::Value::Text("happy".into()),
                sluice_runtime::Value::Null
            ])
        );
        let stamp = r.kind(oid("stamp").await).unwrap().clone();
        assert_eq!(
            crate::values::convert(&stamp, text(2).as_bytes()).unwrap(),
            sluice_runtime::Value::Text("-0043-03-15T10:00:00Z".into())
        );
        assert_eq!(
            crate::values::convert(r.kind(1009).unwrap(), text(3).as_bytes()).unwrap(),
            sluice_runtime::Value::Array(vec![
                sluice_runtime::Value::Text("a b".into()),
                sluice_runtime::Value::Null
            ])
        );
        client
            .batch_execute(&format!("drop schema {schema} cascade"))
            .await
            .unwrap();
    }
}
