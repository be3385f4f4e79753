//! The ledger's HTTP API: accounts, transfers (through the group-commit writer) and entries.

pub mod writer;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use settle_domain::{
    ledger::{
        decide_account_creation, Account, AccountCreation, AccountFlags, Balances, Expect, Side, Transfer,
        TransferError, TransferOp, TransferRequest, TransferResult, BATCH_TRANSFERS_MAX,
    },
    tenancy::IdempotencyRecord,
    Timestamp,
};
use settle_store::{Mode, Scope};
use tokio::sync::oneshot;

use crate::{
    context::{Ctx, Reply},
    error::ApiError,
    extract::{from_value, require_object, JsonBody, Page},
    fields, AppState,
};
use std::sync::Arc;

use writer::{Command, ReplyShape, TransferCommand, WriteError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/ledger/accounts", post(create_account).get(list_accounts))
        .route("/v1/ledger/accounts/{id}", get(get_account))
        .route("/v1/ledger/accounts/{id}/entries", get(list_entries))
        .route("/v1/ledger/transfers", post(create_transfers))
        .route("/v1/ledger/transfers/{id}", get(get_transfer))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FlagsBody {
    #[serde(default)]
    debits_must_not_exceed_credits: bool,
    #[serde(default)]
    credits_must_not_exceed_debits: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAccountBody {
    id: Option<String>,
    currency: String,
    code: Option<i64>,
    name: Option<String>,
    #[serde(default)]
    flags: FlagsBody,
    metadata: Option<Value>,
}

pub const ACCOUNT_CODE_MAX: i64 = 65_535;

fn parse_account(state: &AppState, merchant_id: &str, body: CreateAccountBody) -> Result<Account, ApiError> {
    let id = match body.id {
        Some(id) => fields::ledger_id(&id, "id")?,
        None => state.ids.make("la"),
    };
    if body.flags.debits_must_not_exceed_credits && body.flags.credits_must_not_exceed_debits {
        return Err(ApiError::invalid(
            "flags",
            "`debits_must_not_exceed_credits` and `credits_must_not_exceed_debits` are mutually exclusive",
        ));
    }
    if let Some(code) = body.code {
        if !(0..=ACCOUNT_CODE_MAX).contains(&code) {
            return Err(ApiError::invalid(
                "code",
                format!("`code` must be an integer from 0 to {ACCOUNT_CODE_MAX}"),
            ));
        }
    }
    Ok(Account {
        merchant_id: merchant_id.to_owned(),
        id,
        currency: fields::currency(&body.currency, "currency")?,
        code: body.code,
        name: fields::name(body.name, "name")?,
        flags: AccountFlags {
            debits_must_not_exceed_credits: body.flags.debits_must_not_exceed_credits,
            credits_must_not_exceed_debits: body.flags.credits_must_not_exceed_debits,
        },
        metadata: fields::metadata(body.metadata, "metadata")?.unwrap_or_else(|| json!({})),
        balances: Balances::default(),
        created_at: state.clock.now(),
    })
}

async fn create_account(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<CreateAccountBody>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let account = parse_account(&state, &merchant_id, body)?;
    let key = (merchant_id.clone(), account.id.clone());
    // Two attempts: a concurrent create of the same id (another process) makes the first
    // insert fail; the second attempt then sees the row and answers as for any existing id.
    for attempt in 0..2 {
        let mut tx = state.begin_write(&merchant_id).await?;
        let existing = tx.get_accounts(std::slice::from_ref(&key), false).await?.pop();
        match decide_account_creation(existing.as_ref(), &account) {
            AccountCreation::Exists => {
                let existing = existing.unwrap_or_else(|| account.clone());
                let reply = Reply::json(StatusCode::OK, &account_json(&existing))?;
                return ctx.commit(&state, tx, reply, &[]).await;
            }
            AccountCreation::Conflict(field) => {
                return Err(ApiError::Conflict {
                    code: "account_exists_with_different_fields",
                    message: format!("an account with this id exists with a different `{field}`"),
                    param: Some(field.to_owned()),
                })
            }
            AccountCreation::Created => match tx.insert_account(&account).await {
                Ok(()) => {
                    let reply = Reply::json(StatusCode::CREATED, &account_json(&account))?;
                    let audit = ctx.audit(
                        &state,
                        &merchant_id,
                        "ledger.account.create",
                        "ledger_account",
                        &account.id,
                    );
                    return ctx.commit(&state, tx, reply, &[audit]).await;
                }
                Err(e) if attempt == 0 && e.is_conflict_on("ledger_accounts") => continue,
                Err(e) => return Err(e.into()),
            },
        }
    }
    Err(ApiError::Internal(
        "account creation did not settle in two attempts".into(),
    ))
}

async fn load_account(state: &AppState, merchant_id: &str, id: &str) -> Result<Account, ApiError> {
    let mut tx = state.reader(merchant_id).await?;
    tx.get_accounts(&[(merchant_id.to_owned(), id.to_owned())], false)
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("ledger account", id))
}

async fn get_account(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
) -> Result<Response, ApiError> {
    let account = load_account(&state, ctx.merchant_id(), &id).await?;
    Ok(Reply::json(StatusCode::OK, &account_json(&account))?.into_response())
}

async fn list_accounts(State(state): State<AppState>, ctx: Ctx, page: Page) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let mut tx = state.reader(&merchant_id).await?;
    let listing = tx
        .list_accounts(&merchant_id, &page.0)
        .await
        .map_err(|e| cursor_error(e, &page))?;
    let data: Vec<Value> = listing.items.iter().map(account_json).collect();
    list_reply("/v1/ledger/accounts", data, listing.has_more)
}

async fn list_entries(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    page: Page,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let account = load_account(&state, &merchant_id, &id).await?;
    let mut tx = state.reader(&merchant_id).await?;
    let listing = tx
        .list_entries(&merchant_id, &id, &page.0)
        .await
        .map_err(|e| cursor_error(e, &page))?;
    let data: Vec<Value> = listing.items.iter().map(|t| entry_json(&account, t)).collect();
    list_reply(&format!("/v1/ledger/accounts/{id}/entries"), data, listing.has_more)
}

async fn get_transfer(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    _: crate::extract::NoQuery,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let key = (merchant_id.clone(), id.clone());
    let mut tx = state.store.begin(Scope::Merchant(merchant_id), Mode::Read).await?;
    let transfer = tx
        .get_transfers(std::slice::from_ref(&key))
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("ledger transfer", &id))?;
    let status = tx.get_pending_statuses(&[key]).await?.pop().map(|(_, s)| s);
    let mut body = transfer_json(&transfer);
    if let Some(status) = status {
        body["pending_status"] = json!(status.as_str());
    }
    Ok(Reply::json(StatusCode::OK, &body)?.into_response())
}

pub fn cursor_error(e: settle_store::StoreError, page: &Page) -> ApiError {
    match e {
        settle_store::StoreError::CursorNotFound => ApiError::invalid(
            page.cursor_param(),
            format!("`{}` names no object of this list", page.cursor_param()),
        ),
        other => other.into(),
    }
}

pub fn list_reply(url: &str, data: Vec<Value>, has_more: bool) -> Result<Response, ApiError> {
    let body = json!({ "object": "list", "url": url, "has_more": has_more, "data": data });
    Ok(Reply::json(StatusCode::OK, &body)?.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    id: String,
    debit_account_id: Option<String>,
    credit_account_id: Option<String>,
    amount: Option<i64>,
    currency: Option<String>,
    pending: Option<bool>,
    timeout_seconds: Option<i64>,
    post_pending_id: Option<String>,
    void_pending_id: Option<String>,
    metadata: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    transfers: Vec<Value>,
    #[serde(default)]
    atomic: bool,
}

/// Parses one transfer; `at` prefixes field names (`transfers[3].`) in errors.
fn parse_transfer(value: Value, at: &str) -> Result<TransferRequest, ApiError> {
    let param = if at.is_empty() {
        "body"
    } else {
        at.trim_end_matches('.')
    };
    let value = require_object(value, param)?;
    let body: TransferBody = from_value(value).map_err(|e| prefix_param(e, at))?;
    let p = |name: &str| format!("{at}{name}");
    let id = fields::ledger_id(&body.id, &p("id"))?;
    let opt_id = |v: Option<String>, name: &str| v.map(|v| fields::ledger_id(&v, &p(name))).transpose();
    let debit = opt_id(body.debit_account_id, "debit_account_id")?;
    let credit = opt_id(body.credit_account_id, "credit_account_id")?;
    let amount = body
        .amount
        .map(|a| fields::positive_amount(a, &p("amount")))
        .transpose()?;
    let currency = body
        .currency
        .map(|c| fields::currency(&c, &p("currency")))
        .transpose()?;
    let metadata = fields::metadata(body.metadata, &p("metadata"))?;
    let pending = body.pending.unwrap_or(false);
    let resolution = match (body.post_pending_id, body.void_pending_id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                p("void_pending_id"),
                "use `post_pending_id` or `void_pending_id`, not both",
            ))
        }
        (Some(id), None) => Some((true, fields::ledger_id(&id, &p("post_pending_id"))?)),
        (None, Some(id)) => Some((false, fields::ledger_id(&id, &p("void_pending_id"))?)),
        (None, None) => None,
    };
    if body.timeout_seconds.is_some() && !(pending && resolution.is_none()) {
        return Err(ApiError::invalid(
            p("timeout_seconds"),
            "`timeout_seconds` applies only to pending transfers",
        ));
    }
    let timeout_seconds = body
        .timeout_seconds
        .map(|t| {
            u32::try_from(t).ok().filter(|t| *t > 0).ok_or_else(|| {
                ApiError::invalid(p("timeout_seconds"), "`timeout_seconds` must be from 1 to 4294967295")
            })
        })
        .transpose()?;
    let op = match resolution {
        Some((post, pending_id)) => {
            if pending {
                return Err(ApiError::invalid(p("pending"), "a post or void is not itself pending"));
            }
            let expect = Expect {
                debit_account_id: debit,
                credit_account_id: credit,
                currency,
            };
            if post {
                TransferOp::Post {
                    pending_id,
                    amount,
                    expect,
                }
            } else {
                TransferOp::Void {
                    pending_id,
                    amount,
                    expect,
                }
            }
        }
        None => {
            let debit_account_id = debit.ok_or_else(|| ApiError::missing(p("debit_account_id")))?;
            let credit_account_id = credit.ok_or_else(|| ApiError::missing(p("credit_account_id")))?;
            let amount = amount.ok_or_else(|| ApiError::missing(p("amount")))?;
            let currency = currency.ok_or_else(|| ApiError::missing(p("currency")))?;
            if pending {
                TransferOp::Pending {
                    debit_account_id,
                    credit_account_id,
                    amount,
                    currency,
                    timeout_seconds,
                }
            } else {
                TransferOp::Single {
                    debit_account_id,
                    credit_account_id,
                    amount,
                    currency,
                }
            }
        }
    };
    Ok(TransferRequest { id, op, metadata })
}

fn prefix_param(e: ApiError, at: &str) -> ApiError {
    match e {
        ApiError::Invalid { code, message, param } if !at.is_empty() => {
            let given = param.unwrap_or_else(|| "body".into());
            let named = match given.as_str() {
                "body" => at.trim_end_matches('.').to_owned(),
                p => format!("{at}{p}"),
            };
            ApiError::Invalid {
                code,
                message: message.replacen(&format!("`{given}`"), &format!("`{named}`"), 1),
                param: Some(named),
            }
        }
        other => other,
    }
}

/// A body is one transfer, or `{"transfers": [...], "atomic": bool}`.
fn parse_transfers(value: Value) -> Result<(Vec<TransferRequest>, bool, bool), ApiError> {
    if value.get("transfers").is_none() {
        return Ok((vec![parse_transfer(value, "")?], true, false));
    }
    let batch: BatchBody = from_value(value)?;
    if batch.transfers.is_empty() || batch.transfers.len() > BATCH_TRANSFERS_MAX {
        return Err(ApiError::invalid(
            "transfers",
            format!("`transfers` must hold 1 to {BATCH_TRANSFERS_MAX} transfers"),
        ));
    }
    let requests = batch
        .transfers
        .into_iter()
        .enumerate()
        .map(|(i, v)| parse_transfer(v, &format!("transfers[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((requests, batch.atomic, true))
}

async fn create_transfers(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let merchant_id = ctx.merchant_id().to_owned();
    let (requests, atomic, batch) = parse_transfers(body)?;
    let shape: Arc<dyn ReplyShape> = if batch {
        Arc::new(Batch {
            atomic,
            ids: requests.iter().map(|r| r.id.clone()).collect(),
        })
    } else {
        Arc::new(Single)
    };
    let first = requests.first().map(|r| r.id.clone()).unwrap_or_default();
    let action = if batch {
        "ledger.transfers.create_batch"
    } else {
        "ledger.transfer.create"
    };
    let audit = ctx.audit(&state, &merchant_id, action, "ledger_transfer", &first);
    let idempotency = ctx.idempotency.as_ref().map(|d| IdempotencyRecord {
        merchant_id: merchant_id.clone(),
        key: d.key.clone(),
        fingerprint: d.fingerprint.clone(),
        method: d.method.clone(),
        path: d.path.clone(),
        status_code: 0,
        response_body: String::new(),
        created_at: Timestamp::default(),
    });
    let (reply, answer) = oneshot::channel();
    let command = TransferCommand {
        merchant_id,
        requests,
        atomic,
        shape: shape.clone(),
        idempotency,
        audit: Some(audit),
        then: None,
        announce: Some(crate::events::new_event(
            &state,
            ctx.merchant_id(),
            "transfer_batch.created",
            "transfer_batch",
            &state.ids.make("tb"),
            Value::Null,
        )),
        reply,
    };
    state
        .writer
        .submit(Command::Transfers(Box::new(command)))
        .await
        .map_err(write_error)?;
    match answer.await {
        Ok(Ok(committed)) => {
            let reply = committed.reply.unwrap_or_else(|| shape.render(&committed.results));
            Ok(reply.into_response())
        }
        Ok(Err(e)) => Err(write_error(e)),
        Err(_) => Err(ApiError::Unavailable),
    }
}

pub fn write_error(e: WriteError) -> ApiError {
    match e {
        WriteError::IdempotencyRace => ApiError::IdempotencyRaceLost,
        WriteError::Store(e) => e.into(),
        WriteError::Closed => ApiError::Unavailable,
        WriteError::Recheck => ApiError::Internal("an optimistic group escaped its recheck".into()),
        WriteError::Stale(why) => ApiError::Internal(why),
    }
}

fn transfer_error(e: &TransferError) -> ApiError {
    let (code, message, param) = (e.code(), e.message(), e.param().map(str::to_owned));
    match e {
        TransferError::ExistsWithDifferentFields { .. }
        | TransferError::PendingTransferAlreadyPosted { .. }
        | TransferError::PendingTransferAlreadyVoided { .. }
        | TransferError::PendingTransferExpired { .. } => ApiError::Conflict { code, message, param },
        _ => ApiError::Unprocessable { code, message, param },
    }
}

/// The reply to a single-transfer request: the transfer (201 created, 200 exists) or its error.
struct Single;

impl ReplyShape for Single {
    fn status(&self, results: &[TransferResult]) -> StatusCode {
        match results.first() {
            Some(TransferResult::Created(_)) => StatusCode::CREATED,
            Some(TransferResult::Exists(_)) => StatusCode::OK,
            Some(TransferResult::Failed(e)) => transfer_error(e).status(),
            None => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn render(&self, results: &[TransferResult]) -> Reply {
        let body = match results.first() {
            Some(TransferResult::Created(t) | TransferResult::Exists(t)) => transfer_json(t),
            Some(TransferResult::Failed(e)) => transfer_error(e).body(),
            None => ApiError::Internal(String::new()).body(),
        };
        Reply {
            status: self.status(results),
            body: body.to_string(),
        }
    }
}

/// The reply to a batch: 200 with one result per transfer, in order.
struct Batch {
    atomic: bool,
    ids: Vec<String>,
}

impl ReplyShape for Batch {
    fn status(&self, _results: &[TransferResult]) -> StatusCode {
        StatusCode::OK
    }

    fn render(&self, results: &[TransferResult]) -> Reply {
        let results: Vec<BatchResult> = results
            .iter()
            .zip(&self.ids)
            .map(|(r, id)| match r {
                TransferResult::Created(t) | TransferResult::Exists(t) => BatchResult {
                    error: None,
                    id,
                    result: if matches!(r, TransferResult::Created(_)) {
                        "created"
                    } else {
                        "exists"
                    },
                    transfer: Some(TransferView::from(t)),
                },
                TransferResult::Failed(e) => BatchResult {
                    error: Some(json!({ "code": e.code(), "message": e.message(), "param": e.param() })),
                    id,
                    result: e.code(),
                    transfer: None,
                },
            })
            .collect();
        let body = BatchView {
            atomic: self.atomic,
            object: "ledger_transfer_batch",
            results,
        };
        match serde_json::to_string(&body) {
            Ok(body) => Reply {
                status: StatusCode::OK,
                body,
            },
            Err(e) => {
                let error = ApiError::Internal(format!("serialize: {e}"));
                Reply {
                    status: error.status(),
                    body: error.body().to_string(),
                }
            }
        }
    }
}

#[derive(Serialize)]
struct BatchView<'a> {
    atomic: bool,
    object: &'static str,
    results: Vec<BatchResult<'a>>,
}

#[derive(Serialize)]
struct BatchResult<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
    id: &'a str,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    transfer: Option<TransferView<'a>>,
}

fn flags_json(flags: AccountFlags) -> Value {
    json!({
        "debits_must_not_exceed_credits": flags.debits_must_not_exceed_credits,
        "credits_must_not_exceed_debits": flags.credits_must_not_exceed_debits,
    })
}

pub fn account_json(a: &Account) -> Value {
    let side = a.flags.normal_side();
    let b = a.balances;
    json!({
        "object": "ledger_account",
        "id": a.id,
        "currency": a.currency.code(),
        "code": a.code,
        "name": a.name,
        "flags": flags_json(a.flags),
        "normal_balance": side.as_str(),
        "debits_pending": b.debits_pending,
        "debits_posted": b.debits_posted,
        "credits_pending": b.credits_pending,
        "credits_posted": b.credits_posted,
        "balance": b.balance(side),
        "available": b.available(side),
        "metadata": a.metadata,
        "created": a.created_at.to_rfc3339(),
    })
}

/// A transfer as the API shows it. Serialized straight from the domain value (batch replies
/// carry up to 1,000 of them); fields in alphabetical order, like every other object.
#[derive(Serialize)]
pub struct TransferView<'a> {
    amount: i64,
    created: String,
    credit_account_id: &'a str,
    currency: &'static str,
    debit_account_id: &'a str,
    expires_at: Option<String>,
    id: &'a str,
    metadata: &'a Value,
    object: &'static str,
    pending_id: Option<&'a str>,
    timeout_seconds: Option<u32>,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl<'a> From<&'a Transfer> for TransferView<'a> {
    fn from(t: &'a Transfer) -> Self {
        TransferView {
            amount: t.amount,
            created: t.created_at.to_rfc3339(),
            credit_account_id: &t.credit_account_id,
            currency: t.currency.code(),
            debit_account_id: &t.debit_account_id,
            expires_at: t.expires_at.map(Timestamp::to_rfc3339),
            id: &t.id,
            metadata: &t.metadata,
            object: "ledger_transfer",
            pending_id: t.pending_id.as_deref(),
            timeout_seconds: t.timeout_seconds,
            kind: t.kind.as_str(),
        }
    }
}

/// The data of a `transfer_batch.created` event (`id` is the batch's): the transfers it
/// created, serialized straight to JSON text.
pub fn batch_data(id: &str, transfers: Vec<TransferView<'_>>) -> String {
    #[derive(Serialize)]
    struct Batch<'a> {
        id: &'a str,
        object: &'static str,
        transfers: Vec<TransferView<'a>>,
    }
    let batch = Batch {
        id,
        object: "transfer_batch",
        transfers,
    };
    serde_json::to_string(&batch).unwrap_or_else(|_| "null".into())
}

pub fn transfer_json(t: &Transfer) -> Value {
    serde_json::to_value(TransferView::from(t)).unwrap_or(Value::Null)
}

/// A transfer as one account's entry, with the account's balances right after it.
fn entry_json(account: &Account, t: &Transfer) -> Value {
    let side = account.flags.normal_side();
    let (direction, after) = if t.debit_account_id == account.id {
        (Side::Debit, t.debit_after)
    } else {
        (Side::Credit, t.credit_after)
    };
    let mut entry = transfer_json(t);
    entry["object"] = json!("ledger_entry");
    entry["direction"] = json!(direction.as_str());
    entry["balance_after"] = json!(after.balance(side));
    entry["available_after"] = json!(after.available(side));
    entry
}
