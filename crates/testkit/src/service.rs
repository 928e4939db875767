use std::fmt;
use std::time::Duration;

use tokio::net::TcpStream;

/// A server the integration tests talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// PostgreSQL: `PALISADE_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`.
    Postgres,
    /// Redis: `PALISADE_REDIS_URL`, default `redis://127.0.0.1:6379`.
    Redis,
    /// RabbitMQ: `PALISADE_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    Amqp,
    /// NATS with JetStream: `PALISADE_NATS_URL`, default `nats://127.0.0.1:4222`.
    Nats,
}

impl Service {
    /// Every service, in the order CI checks them.
    pub const ALL: [Service; 4] = [Self::Postgres, Self::Redis, Self::Amqp, Self::Nats];

    /// The environment variable that overrides this service's URL.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Postgres => "PALISADE_POSTGRES_URL",
            Self::Redis => "PALISADE_REDIS_URL",
            Self::Amqp => "PALISADE_AMQP_URL",
            Self::Nats => "PALISADE_NATS_URL",
        }
    }

    /// The URL used when the environment variable is not set (DESIGN §7).
    pub fn default_url(self) -> &'static str {
        match self {
            Self::Postgres => "postgres://postgres@127.0.0.1:5432/test",
            Self::Redis => "redis://127.0.0.1:6379",
            Self::Amqp => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Self::Nats => "nats://127.0.0.1:4222",
        }
    }

    /// The URL to connect to: the environment override or the default.
    pub fn url(self) -> String {
        std::env::var(self.env_var())
            .ok()
            .filter(|url| !url.trim().is_empty())
            .unwrap_or_else(|| self.default_url().to_owned())
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Postgres => 5432,
            Self::Redis => 6379,
            Self::Amqp => 5672,
            Self::Nats => 4222,
        }
    }

    /// `host:port` of this service's URL.
    pub fn host_port(self) -> String {
        host_port(&self.url(), self.default_port())
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Postgres => "postgres",
            Self::Redis => "redis",
            Self::Amqp => "rabbitmq",
            Self::Nats => "nats",
        })
    }
}

/// `host:port` of a URL like `scheme://user:pass@host:port/path?query`.
pub(crate) fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let has_port = match host_port.rsplit_once(':') {
        // An IPv6 literal `[::1]` has colons but no port unless `]:` appears.
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.starts_with('[') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    }
}

/// Whether a TCP connection to the service's `host:port` opens within two seconds.
pub async fn reachable(service: Service) -> bool {
    connects(&service.host_port()).await
}

async fn connects(host_port: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(host_port)).await,
        Ok(Ok(_))
    )
}

/// Whether `PALISADE_REQUIRE_SERVICES=1`: an unreachable service fails the test
/// instead of skipping it.
pub fn require_services() -> bool {
    std::env::var("PALISADE_REQUIRE_SERVICES").is_ok_and(|v| v.trim() == "1")
}

/// The skip rule: the service's URL when it answers; otherwise prints
/// `skipped: <service> unreachable at <url>` and returns `None` — or panics when
/// `PALISADE_REQUIRE_SERVICES=1`.
///
/// # Panics
///
/// When the service is unreachable and `PALISADE_REQUIRE_SERVICES=1`: CI must not
/// pass by skipping.
pub async fn require(service: Service) -> Option<String> {
    require_at(service, service.url(), require_services()).await
}

async fn require_at(service: Service, url: String, required: bool) -> Option<String> {
    if connects(&host_port(&url, service.default_port())).await {
        return Some(url);
    }
    if required {
        panic!("{service} unreachable at {url} and PALISADE_REQUIRE_SERVICES=1");
    }
    println!("skipped: {service} unreachable at {url}");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_read_from_every_url_shape() {
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/test", 1),
            "127.0.0.1:5432"
        );
        assert_eq!(
            host_port("amqp://guest:guest@localhost:5672/%2f", 1),
            "localhost:5672"
        );
        assert_eq!(host_port("redis://127.0.0.1", 6379), "127.0.0.1:6379");
        assert_eq!(host_port("nats://[::1]:4222", 1), "[::1]:4222");
        assert_eq!(host_port("nats://[::1]", 4222), "[::1]:4222");
        assert_eq!(
            host_port("postgres://u:p@db/x?sslmode=disable", 5432),
            "db:5432"
        );
    }

    #[test]
    fn every_service_has_a_distinct_override() {
        let vars: std::collections::HashSet<_> = Service::ALL.iter().map(|s| s.env_var()).collect();
        assert_eq!(vars.len(), Service::ALL.len());
    }

    // Port 1 on loopback is closed on any sane machine.
    const CLOSED: &str = "redis://127.0.0.1:1";

    #[tokio::test]
    async fn an_unreachable_service_is_skipped_when_not_required() {
        assert_eq!(
            require_at(Service::Redis, CLOSED.to_owned(), false).await,
            None
        );
    }

    #[tokio::test]
    async fn an_unreachable_service_fails_the_test_when_required() {
        let outcome = tokio::spawn(require_at(Service::Redis, CLOSED.to_owned(), true)).await;
        assert!(outcome.is_err_and(|e| e.is_panic()));
    }

    #[tokio::test]
    async fn a_reachable_service_yields_its_url() -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("redis://{}", listener.local_addr()?);
        assert_eq!(
            require_at(Service::Redis, url.clone(), true).await,
            Some(url)
        );
        Ok(())
    }
}
