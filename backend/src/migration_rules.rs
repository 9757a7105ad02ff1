//! The rules a migration follows so that it can run on a live database (docs/OPERATIONS.md
//! "Migrations on a live database"), checked on the text of every migration after
//! [`BASELINE`]. A check on text, not a SQL parser: it knows the statements migrations here
//! use, and a rule it cannot see is still the reviewer's.
//!
//! On a table the same migration did not create:
//! - an index is built `CONCURRENTLY` (and the migration starts `-- no-transaction`, since
//!   `CREATE INDEX CONCURRENTLY` cannot run in a transaction, and holds that one statement);
//!   on a partitioned table, which refuses `CONCURRENTLY`, `ON ONLY` the parent, then
//!   `CONCURRENTLY` on each partition (a migration each) and `ALTER INDEX … ATTACH
//!   PARTITION`;
//! - no column changes type and none becomes `NOT NULL` (a rewrite or a full scan under the
//!   strictest lock);
//! - a `CHECK` or foreign key is added `NOT VALID` (validated by a later statement, which
//!   blocks no writes); a primary key or unique constraint only `USING INDEX` (built
//!   concurrently first).
//!
//! Anywhere: no `LOCK TABLE`, `VACUUM FULL` or `CLUSTER`.

use std::collections::BTreeSet;

/// Migrations up to this version ran before the rules existed, each on tables it created or
/// that were still empty; they are not checked.
pub const BASELINE: &str = "20261204000003";

/// sqlx's directive, on a migration's first line, to run it outside a transaction.
pub const NO_TRANSACTION: &str = "-- no-transaction";

/// What in `sql` breaks the rules, one sentence each; empty when it follows them.
pub fn violations(sql: &str) -> Vec<String> {
    let no_transaction = sql.lines().next().map(str::trim) == Some(NO_TRANSACTION);
    let statements = statements(sql);
    let created: BTreeSet<String> = statements
        .iter()
        .filter_map(|s| {
            s.strip_prefix("CREATE TABLE ")
                .map(|rest| table_name(rest.trim_start_matches("IF NOT EXISTS ")))
        })
        .collect();
    let existing = |name: &str| !created.contains(name);
    let mut found = Vec::new();
    if no_transaction && statements.len() > 1 {
        // Postgres runs the statements of one query string in an implicit transaction, and
        // sqlx sends a `-- no-transaction` migration as one string: CONCURRENTLY refuses it.
        found.push(format!(
            "{} statements after `{NO_TRANSACTION}`: one per migration (several run as one implicit transaction)",
            statements.len()
        ));
    }
    for s in &statements {
        if let Some(rest) = s
            .strip_prefix("CREATE INDEX ")
            .or_else(|| s.strip_prefix("CREATE UNIQUE INDEX "))
        {
            let concurrently = rest.starts_with("CONCURRENTLY ");
            if concurrently && !no_transaction {
                found.push(format!(
                    "`{s}`: CONCURRENTLY needs `{NO_TRANSACTION}` on the migration's first line"
                ));
            }
            // `CREATE INDEX name ON t`, or unnamed: `CREATE INDEX ON t`.
            let target = rest
                .trim_start_matches("CONCURRENTLY ")
                .trim_start_matches("IF NOT EXISTS ");
            let on = target
                .strip_prefix("ON ")
                .or_else(|| target.split_once(" ON ").map(|(_, on)| on));
            if let Some(on) = on {
                // `ON ONLY` a partitioned table: the parent's index alone, catalog-only and
                // not valid until each partition's (built CONCURRENTLY) is attached.
                let parent_only = on.starts_with("ONLY ");
                let table = table_name(on.trim_start_matches("ONLY "));
                if existing(&table) && !concurrently && !parent_only {
                    found.push(format!(
                        "`{s}`: an index on the existing table {table} is built CONCURRENTLY"
                    ));
                }
            }
        } else if let Some(rest) = s.strip_prefix("ALTER TABLE ") {
            let rest = rest
                .trim_start_matches("IF EXISTS ")
                .trim_start_matches("ONLY ");
            let table = table_name(rest);
            if !existing(&table) {
                continue;
            }
            let adds_constraint = s.contains(" ADD CONSTRAINT ")
                || s.contains(" ADD CHECK ")
                || s.contains(" ADD FOREIGN KEY ")
                || s.contains(" ADD PRIMARY KEY")
                || s.contains(" ADD UNIQUE");
            // `ALTER [COLUMN] c TYPE t`: COLUMN is optional.
            let alters = rest.contains(" ALTER ");
            if alters && s.contains(" TYPE ") {
                found.push(format!("`{s}`: a type change rewrites {table}"));
            }
            if s.contains(" SET NOT NULL") {
                found.push(format!(
                    "`{s}`: SET NOT NULL scans {table} under an exclusive lock"
                ));
            }
            if adds_constraint
                && (s.contains(" CHECK ")
                    || s.contains(" FOREIGN KEY ")
                    || s.contains(" REFERENCES "))
                && !s.contains(" NOT VALID")
            {
                found.push(format!(
                    "`{s}`: add the constraint NOT VALID, validate it later"
                ));
            }
            // A new column with a CHECK, UNIQUE or PRIMARY KEY of its own is validated (or
            // indexed) over the whole table under the strictest lock.
            if s.contains(" ADD COLUMN ")
                && (s.contains(" CHECK ") || s.contains(" UNIQUE") || s.contains(" PRIMARY KEY"))
            {
                found.push(format!(
                    "`{s}`: add the column bare; constrain it NOT VALID or by an index built CONCURRENTLY"
                ));
            }
            if adds_constraint
                && (s.contains(" PRIMARY KEY") || s.contains(" UNIQUE"))
                && !s.contains(" USING INDEX ")
            {
                found.push(format!(
                    "`{s}`: build the index CONCURRENTLY, then ADD CONSTRAINT … USING INDEX"
                ));
            }
        } else if s.starts_with("LOCK ") || s.starts_with("VACUUM FULL") || s.starts_with("CLUSTER")
        {
            found.push(format!("`{s}`: never on a live table"));
        }
    }
    found
}

/// The statements of `sql`, comments and dollar-quoted bodies (functions) removed, upper-case,
/// whitespace collapsed.
fn statements(sql: &str) -> Vec<String> {
    let mut text = String::new();
    let mut rest = sql;
    while !rest.is_empty() {
        if rest.starts_with("--") {
            rest = rest.find('\n').map_or("", |end| &rest[end..]);
        } else if let Some(tag) = dollar_tag(rest) {
            // `$$ … $$` or `$name$ … $name$`: a body, not statements.
            let body = &rest[tag.len()..];
            rest = body.find(tag).map_or("", |end| &body[end + tag.len()..]);
            text.push_str(" $BODY$ ");
        } else if let Some(c) = rest.chars().next() {
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    text.split(';')
        .map(|s| {
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_uppercase()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// The `$tag$` that opens a dollar-quoted string at the start of `text`, if one does.
fn dollar_tag(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('$')?;
    let end = inner.find('$')?;
    inner[..end]
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then(|| &text[..end + 2])
}

/// The table a clause starts with: its first word, without a schema or quotes.
fn table_name(clause: &str) -> String {
    let word = clause
        .split(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or_default();
    word.rsplit('.')
        .next()
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_catch_what_locks_a_live_table() {
        let cases: [(&str, usize); 21] = [
            ("CREATE TABLE t (id int); CREATE INDEX t_id ON t (id);", 0),
            // The partitioned table's way: the parent only, then each partition concurrently.
            ("CREATE INDEX m_x ON ONLY messages (created_at);", 0),
            ("CREATE INDEX m_x ON messages (created_at);", 1),
            ("CREATE UNIQUE INDEX m_x ON public.messages (id);", 1),
            ("CREATE INDEX CONCURRENTLY m_x ON messages (created_at);", 1),
            (
                "-- no-transaction\nCREATE INDEX CONCURRENTLY m_x ON messages (created_at);",
                0,
            ),
            (
                "-- no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS m_x;\nCREATE INDEX CONCURRENTLY m_x ON messages (created_at);",
                1,
            ),
            ("ALTER TABLE messages ALTER COLUMN seq TYPE numeric;", 1),
            (
                "ALTER TABLE messages ALTER COLUMN media_id SET NOT NULL;",
                1,
            ),
            ("ALTER TABLE messages ADD COLUMN note text;", 0),
            ("ALTER TABLE messages ADD CONSTRAINT c CHECK (seq > 0);", 1),
            (
                "ALTER TABLE messages ADD CONSTRAINT c CHECK (seq > 0) NOT VALID;",
                0,
            ),
            (
                "ALTER TABLE messages ADD CONSTRAINT f FOREIGN KEY (media_id) REFERENCES media (id);",
                1,
            ),
            (
                "ALTER TABLE messages ADD CONSTRAINT u UNIQUE USING INDEX m_x;",
                0,
            ),
            (
                "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE; VACUUM FULL messages;",
                2,
            ),
            ("CREATE INDEX ON messages (created_at);", 1),
            ("ALTER TABLE messages ALTER seq TYPE numeric;", 1),
            ("ALTER TABLE messages ADD PRIMARY KEY (id);", 1),
            ("ALTER TABLE messages ADD COLUMN n int CHECK (n > 0);", 1),
            (
                "ALTER TABLE messages ADD COLUMN n int REFERENCES users (id);",
                0,
            ),
            (
                "CREATE FUNCTION f() RETURNS trigger AS $$ BEGIN CREATE INDEX x ON y (z); END; $$ LANGUAGE plpgsql;",
                0,
            ),
        ];
        for (sql, expected) in cases {
            let found = violations(sql);
            assert_eq!(found.len(), expected, "{sql}: {found:?}");
        }
    }

    /// Every migration after the baseline follows the rules; the baseline ones are still there
    /// (so the list of unchecked ones cannot grow by a rename).
    #[test]
    fn every_migration_after_the_baseline_can_run_on_a_live_database() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let mut baseline = 0;
        for entry in std::fs::read_dir(&dir).expect("migrations/") {
            let path = entry.expect("an entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let version = name.split('_').next().unwrap_or_default();
            if version <= BASELINE {
                baseline += 1;
                continue;
            }
            let sql = std::fs::read_to_string(&path).expect("a readable migration");
            let found = violations(&sql);
            assert!(found.is_empty(), "{name}:\n{}", found.join("\n"));
        }
        assert_eq!(baseline, 8, "the migrations that ran before the rules");
    }
}
