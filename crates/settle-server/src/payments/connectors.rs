//! Which connectors a payment tries, in which order, and whether each is healthy.
//!
//! A merchant's connector accounts hold sealed credentials; routing rules (an ordered list with
//! conditions on currency, amount and card brand) pick the accounts to try, first match first.
//! Without rules every enabled account is a candidate in creation order; a merchant with no
//! connector account at all uses the built-in sandbox (account id `sandbox`). A circuit
//! breaker per connector account (per process) skips an account that keeps failing and lets
//! one trial through after a cool-down.
//!
//! A merchant's accounts and rules are cached per process for `settings_cache_ttl` (two
//! seconds by default): a change made through this process is seen at once, one made through
//! another process within that time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use settle_connectors::{sandbox::Sandbox, Connector, ConnectorSettings};
use settle_domain::{
    breaker::{Breaker, BreakerPolicy},
    payment::ConnectorAccount,
    routing::{route, RouteInput, Rule},
    Secret, Timestamp,
};

use crate::{cache::TtlCache, error::ApiError, vault::Vault};

/// The built-in sandbox's account id, usable by every merchant without configuration.
pub const BUILTIN_SANDBOX: &str = "sandbox";
/// The code of an account whose `base_url` may not be called.
const TARGET_REFUSED: &str = "connector_target_refused";
/// Most connector accounts one authorization tries (breaker skips do not count).
pub const FAILOVER_CANDIDATES_MAX: usize = 3;
/// Most circuit breakers kept in memory; beyond it the oldest state is forgotten (closed).
const BREAKERS_MAX: usize = 10_000;

/// A connector account ready to call.
#[derive(Clone)]
pub struct Candidate {
    pub account_id: String,
    pub connector_name: String,
    pub connector: Arc<dyn Connector>,
}

/// A merchant's connector accounts (enabled or not, in creation order) and routing rules.
pub struct Routing {
    pub accounts: Vec<ConnectorAccount>,
    pub rules: Option<Vec<Rule>>,
}

pub struct Connectors {
    http: reqwest::Client,
    routing: TtlCache<String, Arc<Routing>>,
    routing_ttl: Duration,
    settings: ConnectorSettings,
    policy: BreakerPolicy,
    breakers: Mutex<HashMap<String, Breaker>>,
    builtin: Arc<dyn Connector>,
    /// Whether a `base_url` may be a loopback or private address.
    private_targets: bool,
}

impl Connectors {
    /// An error when the connectors' HTTP client cannot be built as asked (there is no client
    /// without the private-target policy).
    pub fn new(
        settings: ConnectorSettings,
        policy: BreakerPolicy,
        routing_ttl: Duration,
        private_targets: bool,
    ) -> reqwest::Result<Connectors> {
        let builder = reqwest::Client::builder().timeout(settings.timeout);
        let http = crate::outbound::restrict(builder, private_targets).build()?;
        let builtin = Arc::new(Sandbox::default().with_settings(&settings));
        Ok(Connectors {
            http,
            routing: TtlCache::default(),
            routing_ttl,
            settings,
            policy,
            breakers: Mutex::new(HashMap::new()),
            builtin,
            private_targets,
        })
    }

    /// The merchant's routing as cached, if still fresh.
    pub fn cached_routing(&self, merchant_id: &str) -> Option<Arc<Routing>> {
        self.routing.get(merchant_id, self.routing_ttl)
    }

    pub fn remember_routing(&self, merchant_id: &str, routing: Arc<Routing>) {
        self.routing.put(merchant_id.to_owned(), routing);
    }

    /// Called once a change to the merchant's accounts or rules has committed.
    pub fn forget_routing(&self, merchant_id: &str) {
        self.routing.forget(merchant_id);
    }

    fn builtin(&self) -> Candidate {
        Candidate {
            account_id: BUILTIN_SANDBOX.into(),
            connector_name: settle_connectors::sandbox::NAME.into(),
            connector: self.builtin.clone(),
        }
    }

    /// Opens an account's credentials and builds its connector.
    pub fn build(&self, vault: &Vault, account: &ConnectorAccount) -> Result<Candidate, ApiError> {
        let context = sealing_context(&account.merchant_id, &account.id);
        let plain = vault
            .open(&account.credentials_sealed, &context)
            .map_err(|_| ApiError::Internal(format!("connector account {} credentials do not open", account.id)))?;
        let credentials: Value = serde_json::from_slice(&plain)
            .map_err(|_| ApiError::Internal(format!("connector account {} credentials unreadable", account.id)))?;
        if !self.target_allowed(&credentials) {
            // Made while private targets were allowed: not called once they are not.
            return Err(ApiError::Upstream {
                code: TARGET_REFUSED,
                message: format!(
                    "connector account {}'s `base_url` is a loopback or private address, which this server refuses",
                    account.id
                ),
            });
        }
        let connector = settle_connectors::build(
            &account.connector,
            &Secret::new(credentials),
            &self.settings,
            &self.http,
        )
        .map_err(|(field, message)| ApiError::invalid(field, message))?;
        Ok(Candidate {
            account_id: account.id.clone(),
            connector_name: account.connector.clone(),
            connector,
        })
    }

    /// Checks credentials before they are stored.
    pub fn check_credentials(&self, connector: &str, credentials: &Value) -> Result<(), ApiError> {
        let known = settle_connectors::credential_keys(connector);
        if let Some(key) = credentials
            .as_object()
            .and_then(|map| map.keys().find(|k| !known.contains(&k.as_str())))
        {
            return Err(ApiError::Invalid {
                code: "parameter_unknown",
                message: format!(
                    "unknown field `credentials.{key}`: a {connector} account's credentials take {}",
                    known.join(", ")
                ),
                param: Some(format!("credentials.{key}")),
            });
        }
        settle_connectors::build(connector, &Secret::new(credentials.clone()), &self.settings, &self.http)
            .map_err(|(field, message)| ApiError::invalid(field, message))?;
        if !self.target_allowed(credentials) {
            return Err(ApiError::invalid(
                "credentials.base_url",
                "`credentials.base_url` is a loopback or private address, which this server refuses \
                 (`--connector-private-targets allow` permits it)",
            ));
        }
        Ok(())
    }

    /// Whether the credentials' `base_url`, if any, may be called: its host is checked here
    /// when it is an address literal or `localhost` (a name is checked when it is resolved).
    fn target_allowed(&self, credentials: &Value) -> bool {
        credentials
            .get("base_url")
            .and_then(Value::as_str)
            .is_none_or(|url| crate::outbound::url_allowed(url, self.private_targets))
    }

    /// The connector of the account that holds a payment's authorization.
    pub fn for_account(
        &self,
        vault: &Vault,
        account_id: &str,
        account: Option<&ConnectorAccount>,
    ) -> Result<Candidate, ApiError> {
        match account {
            Some(account) => self.build(vault, account),
            None if account_id == BUILTIN_SANDBOX => Ok(self.builtin()),
            None => Err(ApiError::Internal(format!("connector account {account_id} is gone"))),
        }
    }

    /// The accounts to try for one authorization, in order.
    pub fn candidates(
        &self,
        vault: &Vault,
        accounts: &[ConnectorAccount],
        rules: Option<&[Rule]>,
        requested: Option<&str>,
        input: &RouteInput,
    ) -> Result<Vec<Candidate>, ApiError> {
        let enabled: Vec<&ConnectorAccount> = accounts
            .iter()
            .filter(|a| a.enabled && requested.is_none_or(|name| a.connector == name))
            .collect();
        let ordered: Vec<&ConnectorAccount> = match rules {
            Some(rules) if !rules.is_empty() => route(rules, input)
                .iter()
                .filter_map(|id| enabled.iter().copied().find(|a| &a.id == id))
                .collect(),
            _ => enabled,
        };
        if ordered.is_empty() {
            let sandbox_allowed = requested.is_none_or(|name| name == settle_connectors::sandbox::NAME);
            if accounts.is_empty() && sandbox_allowed {
                return Ok(vec![self.builtin()]);
            }
            return Err(ApiError::Unprocessable {
                code: "no_connector_available",
                message: "no enabled connector account matches this payment (check the routing rules)".into(),
                param: requested.map(|_| "connector".to_owned()),
            });
        }
        let mut candidates = Vec::with_capacity(ordered.len());
        let mut refused = None;
        for account in ordered {
            match self.build(vault, account) {
                Ok(candidate) => candidates.push(candidate),
                // Passed over, as an open circuit is; the others may still be tried.
                Err(
                    e @ ApiError::Upstream {
                        code: TARGET_REFUSED, ..
                    },
                ) => {
                    tracing::warn!(merchant_id = %account.merchant_id, account_id = %account.id, "connector account passed over: {e:?}");
                    refused.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match (candidates.is_empty(), refused) {
            (true, Some(e)) => Err(e),
            _ => Ok(candidates),
        }
    }

    fn breaker_key(merchant_id: &str, account_id: &str) -> String {
        format!("{merchant_id}/{account_id}")
    }

    /// Whether the account's breaker lets a call through now.
    pub fn allow(&self, merchant_id: &str, account_id: &str, now: Timestamp) -> bool {
        let Ok(mut breakers) = self.breakers.lock() else {
            return true;
        };
        if breakers.len() >= BREAKERS_MAX {
            breakers.clear();
        }
        breakers
            .entry(Self::breaker_key(merchant_id, account_id))
            .or_default()
            .allow(&self.policy, now)
    }

    pub fn record(&self, merchant_id: &str, account_id: &str, healthy: bool, now: Timestamp) {
        if let Ok(mut breakers) = self.breakers.lock() {
            let breaker = breakers.entry(Self::breaker_key(merchant_id, account_id)).or_default();
            if healthy {
                breaker.record_success();
            } else {
                breaker.record_failure(&self.policy, now);
            }
        }
    }

    /// Breaker states, for `GET /v1/connector_accounts`.
    pub fn breaker_state(&self, merchant_id: &str, account_id: &str) -> &'static str {
        self.breakers
            .lock()
            .ok()
            .and_then(|b| {
                b.get(&Self::breaker_key(merchant_id, account_id))
                    .map(Breaker::state_name)
            })
            .unwrap_or("closed")
    }
}

/// What a sealed value of a row is bound to.
pub fn sealing_context(merchant_id: &str, id: &str) -> String {
    format!("{merchant_id}/{id}")
}
