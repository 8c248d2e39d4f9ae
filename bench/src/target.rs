//! `http://` URLs resolved once, and TCP connections to them from a chosen
//! loopback source address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use tokio::net::{TcpSocket, TcpStream};

use crate::TOPIC_PLACEHOLDER;

/// What `{topic}` stands in for while a URL is parsed.
const TOPIC_STAND_IN: &str = "__bench_topic__";

/// An `http://host[:port]/path` URL, resolved once to a socket address.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// Where connections go (the first IPv4 address of the host, else the first one).
    pub addr: SocketAddr,
    /// `host[:port]`, sent as the `Host` header.
    pub authority: String,
    /// Path and query, sent as the request target (`/` when the URL has none).
    pub path: String,
}

impl Target {
    /// Parses and resolves `url`.
    ///
    /// # Errors
    /// When it is not an `http://` URL with a host, or the host does not resolve.
    pub async fn resolve(url: &str) -> anyhow::Result<Self> {
        // `{` is not a URI character: parse with a stand-in, put it back in `path`.
        let uri: hyper::Uri = url
            .replace(TOPIC_PLACEHOLDER, TOPIC_STAND_IN)
            .parse()
            .with_context(|| format!("bad URL {url:?}"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "only http:// URLs are supported, got {url:?}"
        );
        let authority = uri
            .authority()
            .with_context(|| format!("no host in {url:?}"))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("cannot resolve {host:?}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .with_context(|| format!("{host:?} resolves to no address"))?;
        Ok(Self {
            url: url.to_owned(),
            addr,
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned())
                .replace(TOPIC_STAND_IN, TOPIC_PLACEHOLDER),
        })
    }

    /// The request target with `{topic}` replaced by `topic` (used as is:
    /// bench topic names `t<k>` need no percent-encoding).
    pub fn path_for(&self, topic: Option<&str>) -> String {
        match topic {
            Some(topic) => self.path.replace(TOPIC_PLACEHOLDER, topic),
            None => self.path.clone(),
        }
    }

    /// The source address for the `index`-th connection when `source_addrs`
    /// loopback addresses (127.0.0.1 ..= 127.0.0.N) are in use: `None` (let
    /// the kernel choose) for one address or a target that is not IPv4 loopback.
    pub fn source_for(&self, index: usize, source_addrs: u8) -> Option<IpAddr> {
        let n = usize::from(source_addrs);
        if n <= 1 || !matches!(self.addr.ip(), IpAddr::V4(v4) if v4.is_loopback()) {
            return None;
        }
        let last = u8::try_from(1 + index % n).unwrap_or(1);
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
    }
}

/// Connects to `addr`, bound to `source` first when given; `TCP_NODELAY` set.
///
/// A plain `bind(ip, 0)` reserves an ephemeral port for that socket alone,
/// whatever the destination, and the ports held by earlier runs' TIME_WAIT
/// sockets and by nginx's upstream connections are not available to it: a
/// storm's third run of 10,000 streams got `EADDRINUSE` for 4,340 of them.
/// On Linux `IP_BIND_ADDRESS_NO_PORT` (ip(7)) defers the port to `connect`,
/// which only needs the 4-tuple to be unique.
pub(crate) async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        #[cfg(target_os = "linux")]
        if ip.is_ipv4() {
            nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
                &true,
            )
            .map_err(std::io::Error::from)?;
        }
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_host_port_and_path() {
        let t = Target::resolve("http://127.0.0.1:3000/events/sse?x=1")
            .await
            .unwrap();
        assert_eq!(t.addr, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:3000");
        assert_eq!(t.path, "/events/sse?x=1");
        let t = Target::resolve("http://127.0.0.1").await.unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path, "/");
        assert!(Target::resolve("https://127.0.0.1/").await.is_err());
        let t = Target::resolve("http://127.0.0.1:1/sub/{topic}?topic={topic}")
            .await
            .unwrap();
        assert_eq!(t.path, "/sub/{topic}?topic={topic}");
        assert_eq!(t.path_for(Some("t7")), "/sub/t7?topic=t7");
    }

    #[tokio::test]
    async fn spreads_source_addresses_over_loopback() {
        let t = Target::resolve("http://127.0.0.1:1/").await.unwrap();
        assert_eq!(t.source_for(0, 1), None);
        assert_eq!(t.source_for(0, 3), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(t.source_for(4, 3), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(t.source_for(5, 3), Some("127.0.0.3".parse().unwrap()));
    }
}
