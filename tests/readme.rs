//! The README's SQL examples run against a migrated database (an example that no longer
//! matches the schema fails here).

mod common;

use common::TestDb;

#[tokio::test]
async fn every_sql_block_in_the_readme_runs_against_the_schema() {
    let db = TestDb::new().await;
    twitch_chat_logger::store::postgres::MIGRATOR.run(&db.pool).await.unwrap();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks: Vec<&str> = readme.split("```sql").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    assert!(!blocks.is_empty());
    let mut n = 0;
    for block in blocks {
        for stmt in block
            .split(';')
            .map(str::trim)
            .filter(|s| s.lines().any(|l| !l.trim().is_empty() && !l.trim().starts_with("--")))
        {
            sqlx::raw_sql(sqlx::AssertSqlSafe(stmt.to_string()))
                .execute(&db.pool)
                .await
                .unwrap_or_else(|e| panic!("README query failed: {e}\n{stmt}"));
            n += 1;
        }
    }
    assert!(n >= 5, "ran {n} queries");
}
