//! SQLite storage. One connection behind a mutex; WAL mode so a crash of the
//! process never loses an acknowledged write.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::{json, Value};

use crate::NewProduct;

#[derive(Clone)]
pub struct Db(Arc<Mutex<Connection>>);

fn row_to_json(r: &Row<'_>) -> rusqlite::Result<Value> {
    Ok(json!({
        "id": r.get::<_, i64>(0)?,
        "name": r.get::<_, String>(1)?,
        "price": r.get::<_, f64>(2)?,
        "stock": r.get::<_, i64>(3)?,
        "description": r.get::<_, Option<String>>(4)?,
    }))
}

fn e(err: rusqlite::Error) -> String {
    format!("database error: {err}")
}

impl Db {
    pub fn open(path: &Path) -> Result<Db, String> {
        let conn = Connection::open(path)
            .map_err(|err| format!("cannot open database {}: {err}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(e)?;
        let init = || {
            conn.execute_batch(
                "PRAGMA journal_mode=WAL;
                 PRAGMA synchronous=NORMAL;
                 CREATE TABLE IF NOT EXISTS products (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     name TEXT NOT NULL,
                     price REAL NOT NULL,
                     stock INTEGER NOT NULL,
                     description TEXT
                 );",
            )
        };
        // Several instances starting at once on a new file: switching it to
        // WAL can answer SQLITE_BUSY without waiting for the busy timeout.
        // Retry for up to 5 s.
        let mut tries = 0;
        loop {
            match init() {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if f.code == rusqlite::ErrorCode::DatabaseBusy && tries < 250 =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(err) => {
                    return Err(format!(
                        "cannot initialise database {}: {err}",
                        path.display()
                    ))
                }
            }
        }
        Ok(Db(Arc::new(Mutex::new(conn))))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self, limit: i64, offset: i64) -> Result<(Vec<Value>, i64), String> {
        let c = self.conn();
        let total: i64 = c
            .query_row("SELECT COUNT(*) FROM products", [], |r| r.get(0))
            .map_err(e)?;
        let mut stmt = c
            .prepare_cached("SELECT id, name, price, stock, description FROM products ORDER BY id LIMIT ?1 OFFSET ?2")
            .map_err(e)?;
        let items = stmt
            .query_map(params![limit, offset], row_to_json)
            .map_err(e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        Ok((items, total))
    }

    pub fn get(&self, id: i64) -> Result<Option<Value>, String> {
        self.conn()
            .query_row(
                "SELECT id, name, price, stock, description FROM products WHERE id = ?1",
                params![id],
                row_to_json,
            )
            .optional()
            .map_err(e)
    }

    pub fn insert(&self, p: &NewProduct) -> Result<Value, String> {
        let c = self.conn();
        c.execute(
            "INSERT INTO products (name, price, stock, description) VALUES (?1, ?2, ?3, ?4)",
            params![p.name, p.price, p.stock, p.description],
        )
        .map_err(e)?;
        let id = c.last_insert_rowid();
        Ok(
            json!({"id": id, "name": p.name, "price": p.price, "stock": p.stock, "description": p.description}),
        )
    }

    pub fn update(&self, id: i64, p: &NewProduct) -> Result<Option<Value>, String> {
        let n = self
            .conn()
            .execute(
                "UPDATE products SET name = ?1, price = ?2, stock = ?3, description = ?4 WHERE id = ?5",
                params![p.name, p.price, p.stock, p.description, id],
            )
            .map_err(e)?;
        Ok((n == 1).then(|| json!({"id": id, "name": p.name, "price": p.price, "stock": p.stock, "description": p.description})))
    }

    pub fn delete(&self, id: i64) -> Result<bool, String> {
        let n = self
            .conn()
            .execute("DELETE FROM products WHERE id = ?1", params![id])
            .map_err(e)?;
        Ok(n == 1)
    }
}
