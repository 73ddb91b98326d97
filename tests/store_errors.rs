//! What a failed write carries: the variant the writer acts on, and the cause as its source
//! (typed, with the SQLSTATE), in the same words as before. Real PostgreSQL.

mod common;

use common::*;
use sqlx::postgres::PgPoolOptions;
use std::error::Error as _;
use std::time::Duration;
use twitch_chat_logger::store::postgres::{PgStore, WriteFailure};
use twitch_chat_logger::store::{Batch, StoreError};

fn failure(e: &StoreError) -> &WriteFailure {
    e.source().and_then(|s| s.downcast_ref::<WriteFailure>()).expect("the cause is the store's typed failure")
}

#[tokio::test]
async fn a_refused_row_is_rejected_with_the_server_error_as_source_and_its_sqlstate() {
    let db = TestDb::new().await;
    let store = PgStore::new(db.pool.clone());
    store.migrate().await.unwrap();
    sqlx::raw_sql("ALTER TABLE chat_messages ADD CONSTRAINT no_poison CHECK (text <> 'poison')")
        .execute(&db.pool)
        .await
        .unwrap();
    let batch = Batch { messages: vec![chat_message(1, "poison")], ..Batch::default() };

    let e = store.write_one(&batch).await.unwrap_err();
    assert!(matches!(e, StoreError::Rejected(_)), "{e:?}");
    let WriteFailure::Server(db_error) = failure(&e) else { panic!("{e:?}") };
    assert_eq!(db_error.code().as_deref(), Some("23514"));
    assert_eq!(failure(&e).sql_state().as_deref(), Some("23514"));
    // The words a dead letter keeps and a log line shows, as before the error was typed.
    // A new database is partitioned: PostgreSQL names the partition the row went to.
    let said = e.cause().to_string();
    assert!(said.starts_with("new row for relation \"chat_messages"), "{said}");
    assert!(said.ends_with("\" violates check constraint \"no_poison\" (SQLSTATE 23514)"), "{said}");
    assert_eq!(e.one_line(), format!("database rejected a row: {said}"));
    assert_eq!(e.to_string(), "database rejected a row", "the cause is the source, not repeated");
    assert_eq!(format!("{:#}", anyhow::Error::new(e)), format!("database rejected a row: {said}"));
}

#[tokio::test]
async fn a_database_nobody_answers_for_is_unavailable_with_the_driver_error_as_source() {
    // Port 1 on loopback: nothing listens, the connection is refused.
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let store = PgStore::new(pool);
    let e = store.write_one(&Batch { messages: vec![chat_message(1, "fine")], ..Batch::default() }).await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    let WriteFailure::Driver(driver) = failure(&e) else { panic!("{e:?}") };
    assert_eq!(e.cause().to_string(), driver.to_string(), "the driver's own words");
    assert!(e.one_line().starts_with("database unavailable: "), "{}", e.one_line());
    let shown = e.one_line();
    assert_eq!(format!("{:#}", anyhow::Error::new(e)), shown, "a chain that says each thing once");
}

#[tokio::test]
async fn a_write_before_the_schema_is_ready_is_unavailable_and_says_why() {
    let db = TestDb::new().await;
    let cfg = twitch_chat_logger::config::DatabaseConfig::Url(db.url.clone().into());
    let store = PgStore::connect_lazy(&cfg).unwrap();
    let e = store.write_one(&Batch { messages: vec![chat_message(1, "fine")], ..Batch::default() }).await.unwrap_err();
    assert!(matches!(failure(&e), WriteFailure::SchemaNotReady(_)), "{e:?}");
    assert_eq!(e.one_line(), "database unavailable: database schema not ready yet: not connected yet");
}
