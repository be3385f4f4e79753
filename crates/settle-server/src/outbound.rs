//! Calls to addresses a merchant chose (webhook endpoints, a connector account's `base_url`):
//! when the operator refuses private targets, no loopback, private, link-local or otherwise
//! non-public address is called, whether written literally or reached through a name.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use settle_domain::webhook::is_public_ip;

/// Whether a URL host (as `Url::host_str` gives it) may be called when private targets
/// are refused: no private address literal, no `localhost`. Other names are checked
/// when they are resolved.
pub fn public_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => is_public_ip(ip),
        Err(_) => {
            let name = bare.trim_end_matches('.').to_ascii_lowercase();
            name != "localhost" && !name.ends_with(".localhost")
        }
    }
}

/// A resolver that answers only public addresses (and fails when a name has none).
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.into_iter().filter(|a| is_public_ip(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

/// Whether `url` may be called: always when private targets are allowed, otherwise only when
/// it parses and its host passes [`public_host`].
pub fn url_allowed(url: &str, private_targets: bool) -> bool {
    private_targets
        || reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(public_host))
            .unwrap_or(false)
}

/// `builder` that follows no redirect (a redirect could lead anywhere, with the request's
/// body) and, when private targets are refused, uses no proxy (a proxy would resolve names
/// itself) and resolves names to public addresses only. Address literals are not resolved:
/// check them with [`url_allowed`] before calling.
pub fn restrict(builder: reqwest::ClientBuilder, private_targets: bool) -> reqwest::ClientBuilder {
    let builder = builder.redirect(reqwest::redirect::Policy::none());
    if private_targets {
        builder
    } else {
        builder.no_proxy().dns_resolver(Arc::new(PublicOnly))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_judged_public_or_not() {
        for private in [
            "127.0.0.1",
            "[::1]",
            "localhost",
            "LOCALHOST.",
            "api.localhost",
            "10.0.0.8",
            "[fe80::1]",
        ] {
            assert!(!public_host(private), "{private}");
        }
        for public in ["example.com", "8.8.8.8", "[2606:4700:4700::1111]"] {
            assert!(public_host(public), "{public}");
        }
    }
}
