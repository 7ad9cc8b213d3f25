//! The public listener: the address Microsoft Graph posts change and lifecycle notifications
//! to (`/webhooks/graph`, `/webhooks/graph/lifecycle`, see [`super::webhooks`]), and where browsers come back from Microsoft's
//! sign-in and admin consent pages (`/oauth/callback`, `/oauth/consent-callback`).
//!
//! Owns no tables. Invariants: handlers only validate and record; they never call Graph; the
//! OAuth answers are plain text, never cached, and never echo codes, tokens or secrets.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::oauth::{self, CallbackError, ConsentOutcome};
use crate::store::Store;
use crate::vault::identity::IdentityClient;
use crate::vault::Keyring;

/// What the public handlers need.
#[derive(Clone)]
pub struct PublicState {
    /// The database.
    pub store: Store,
    /// The vault keys.
    pub keys: Arc<Keyring>,
    /// The identity platform client.
    pub identity: IdentityClient,
    /// `identity.authority`, recorded on new connections.
    pub authority: String,
    /// The delegated scopes asked for.
    pub scope: String,
}

/// The public router: Graph's webhooks and the OAuth callbacks.
pub fn router(webhooks: super::webhooks::WebhookState, state: PublicState) -> Router {
    Router::new()
        .route("/oauth/callback", get(sign_in_callback))
        .route("/oauth/consent-callback", get(consent_callback))
        .merge(super::webhooks::router(webhooks))
        .fallback(super::not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn({
            let metrics = std::sync::Arc::new(crate::metrics::HttpMetrics::new("public"));
            move |request, next| crate::metrics::track_http(metrics.clone(), request, next)
        }))
}

fn page(status: StatusCode, text: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

const INVALID: &str = "This link is invalid, was already used or has expired (10 minutes). Start again from tenantd.\n";

fn failure(err: &CallbackError) -> Response {
    match err {
        CallbackError::InvalidState => page(StatusCode::BAD_REQUEST, INVALID.into()),
        CallbackError::Token(token) => {
            tracing::warn!(reason = err.reason_code(), error = %token, "the identity platform refused a browser sign-in");
            page(
                StatusCode::BAD_GATEWAY,
                format!(
                    "The identity platform refused the sign-in ({}: {token}). Start the sign-in again.\n",
                    err.reason_code()
                ),
            )
        }
        CallbackError::Connection(connection) => {
            tracing::error!(
                reason = connection.reason_code(),
                "oauth callback could not be recorded"
            );
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "tenantd could not record the result ({}); try again.\n",
                    connection.reason_code()
                ),
            )
        }
    }
}

async fn sign_in_callback(
    State(state): State<PublicState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(flow) = query.get("state") else {
        return page(StatusCode::BAD_REQUEST, INVALID.into());
    };
    if query.contains_key("error") {
        return page(
            StatusCode::BAD_REQUEST,
            "The sign-in was not completed at Microsoft.\n".into(),
        );
    }
    let Some(code) = query.get("code") else {
        return page(StatusCode::BAD_REQUEST, INVALID.into());
    };
    match oauth::complete_authorize(
        &state.store,
        &state.keys,
        &state.identity,
        &state.authority,
        flow,
        code,
        &state.scope,
    )
    .await
    {
        Ok(connection) => page(
            StatusCode::OK,
            format!(
                "Connected {} to tenant {}. You can close this window.\n",
                connection.user_name.as_deref().unwrap_or("the user"),
                connection.tenant_id
            ),
        ),
        Err(err) => failure(&err),
    }
}

async fn consent_callback(
    State(state): State<PublicState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(flow) = query.get("state") else {
        return page(StatusCode::BAD_REQUEST, INVALID.into());
    };
    let outcome = oauth::complete_consent(
        &state.store,
        flow,
        query.get("admin_consent").map(String::as_str),
        query.get("error").map(String::as_str),
    )
    .await;
    match outcome {
        Ok(ConsentOutcome::Granted { tenant_id, reactivated }) => page(
            StatusCode::OK,
            format!("Admin consent recorded for tenant {tenant_id}; {reactivated} connection(s) active again. You can close this window.\n"),
        ),
        Ok(ConsentOutcome::Refused { tenant_id, error }) => page(
            StatusCode::OK,
            format!("Admin consent was not granted for tenant {tenant_id} ({error}).\n"),
        ),
        Err(err) => failure(&err),
    }
}
