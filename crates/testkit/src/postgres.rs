//! Fresh PostgreSQL databases per test.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::{Service, require, unique_name};

/// A database created for one test. It is left behind when the test ends (dropping
/// a database needs every connection closed, which a failing test may not do);
/// [`FreshDatabase::drop_database`] removes it when the test wants to tidy up, and
/// CI's databases live only as long as the machine.
#[derive(Clone, Debug)]
pub struct FreshDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl FreshDatabase {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL that connects to this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database, terminating connections still open to it.
    pub async fn drop_database(self) -> Result<(), sqlx::Error> {
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        admin.close().await
    }
}

/// Creates a brand-new database on the PostgreSQL server of [`Service::Postgres`]
/// and returns it, or applies the skip rule when the server is unreachable.
///
/// # Panics
///
/// When the server answers but refuses to create a database (a broken test setup),
/// or when it is unreachable and `PALISADE_REQUIRE_SERVICES=1`.
pub async fn fresh_database() -> Option<FreshDatabase> {
    let admin_url = require(Service::Postgres).await?;
    let name = unique_name("palisade_test");
    let create = async {
        let mut admin = PgConnection::connect(&admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await?;
        admin.close().await
    };
    if let Err(error) = create.await {
        panic!("creating test database {name} at {admin_url}: {error}");
    }
    let url = with_database(&admin_url, &name);
    Some(FreshDatabase {
        name,
        url,
        admin_url,
    })
}

/// Replaces the database (path) of a `postgres://` URL, keeping its query string.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_any_url_shape() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
        assert_eq!(
            with_database("postgres://h/db?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }

    #[tokio::test]
    async fn a_fresh_database_is_empty_and_its_own() -> Result<(), sqlx::Error> {
        let Some(a) = fresh_database().await else {
            return Ok(());
        };
        let Some(b) = fresh_database().await else {
            return Ok(());
        };
        assert_ne!(a.name(), b.name());
        let mut conn = PgConnection::connect(a.url()).await?;
        let current: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut conn)
            .await?;
        assert_eq!(current, a.name());
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .fetch_one(&mut conn)
        .await?;
        assert_eq!(tables, 0);
        conn.close().await?;
        a.drop_database().await?;
        b.drop_database().await
    }
}
