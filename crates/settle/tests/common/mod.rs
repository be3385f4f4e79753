//! Helpers the binary's test files share (each test file is its own crate and uses a part).
#![allow(dead_code)]

/// Whether this is a CI run, where a missing dependency fails instead of skipping.
pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// A vault key for a PostgreSQL run (64 hex digits), made by the test.
pub fn vault_key() -> String {
    (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// A fresh PostgreSQL database named `<prefix>_<pid>_<random>`, for one test to drop at its
/// end: (the admin pool, its name, its URL). `None` (after a loud message) when PostgreSQL
/// cannot be reached, which fails the test under `CI=true`.
pub async fn fresh_database(prefix: &str) -> Option<(sqlx::PgPool, String, String)> {
    let url = std::env::var("SETTLE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin = match sqlx::PgPool::connect(&url).await {
        Ok(pool) => pool,
        Err(e) if ci() => panic!("PostgreSQL unreachable at {url}: {e}"),
        Err(e) => {
            eprintln!("\n!!! SKIPPING a PostgreSQL test: cannot reach {url} ({e}).\n");
            return None;
        }
    };
    let name = format!("{prefix}_{}_{}", std::process::id(), rand::random::<u32>());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    let (base, _) = url.rsplit_once('/').expect("database URL with a database name");
    Some((admin, name.clone(), format!("{base}/{name}")))
}
