//! National clouds against the emulator standing in for one: tenantd configured for a cloud
//! asks for tokens of that cloud's Graph audience and is served; a token of another cloud's
//! audience is refused by the cloud's Graph, and the cloud's identity platform issues none
//! for another cloud's Graph. Every Graph request carries a fresh `client-request-id`, which
//! Graph echoes beside its own `request-id`. Sources: learn.microsoft.com/graph/deployments,
//! learn.microsoft.com/graph/sdks/national-clouds (scopes use the national Graph host),
//! learn.microsoft.com/graph/best-practices-concept (client-request-id).

use std::sync::Arc;

use graph_emulator::world::Cloud as EmulatedCloud;
use tenantd::config::{Cloud, GraphConfig};
use tenantd::graph::{GraphClient, GraphError};
use tenantd::vault::identity::{token_claims, IdentityClient};
use tenantd::vault::tokens::TokenService;

use crate::helpers::{default_app, seeded_emulator, TestDb};
use crate::on_both_backends;
use crate::webhooks::TENANT;

fn emulate(emulator: &graph_emulator::Emulator, cloud: EmulatedCloud) {
    let settings = graph_emulator::Settings {
        cloud,
        ..emulator.shared().settings()
    };
    emulator.shared().set_settings(settings);
}

async fn a_national_cloud_gets_and_needs_tokens_of_its_own_audience(db: TestDb) {
    let (emulator, client_id, secret) = seeded_emulator(TENANT, 1, &["User.Read.All"]).await;
    let user_id = crate::helpers::first_user_id(&emulator, TENANT);
    let store = db.store().await;
    store.migrate().await.unwrap();
    let key = tenantd::vault::Keyring::new_key_line("k1");
    let keys = Arc::new(tenantd::vault::Keyring::parse(std::path::Path::new("k"), &key).unwrap());
    let connection = default_app(&store, &keys, &emulator, TENANT, &client_id, &secret).await;
    let authority = url::Url::parse(&emulator.base_url()).unwrap();
    // tenantd as configured for a cloud, its URLs pointing at the stand-in.
    let configured = |cloud: Cloud| {
        let graph = GraphConfig {
            cloud,
            base_url: url::Url::parse(&emulator.graph_url()).unwrap(),
            ..GraphConfig::default()
        };
        let identity =
            IdentityClient::new(authority.clone()).with_graph_resource(graph.token_resource());
        let tokens = Arc::new(TokenService::new(store.clone(), keys.clone(), identity));
        (GraphClient::new(&graph, tokens.clone()), tokens)
    };

    // The emulator as US Government L4; tenantd configured for it.
    emulate(&emulator, EmulatedCloud::Usgov);
    let (usgov, tokens) = configured(Cloud::Usgov);
    assert_eq!(tokens.graph_resource(), "https://graph.microsoft.us");
    usgov.get_user(&connection, &user_id).await.unwrap();
    let token = tokens
        .access_token(&connection, "https://graph.microsoft.us")
        .await
        .unwrap();
    assert_eq!(
        token_claims(token.expose()).unwrap()["aud"],
        "https://graph.microsoft.us"
    );

    // tenantd configured for the global cloud: the US Government identity platform has no
    // `https://graph.microsoft.com` to issue for.
    let (global, _) = configured(Cloud::Global);
    match global.get_user(&connection, &user_id).await {
        Err(GraphError::Token(err)) => assert_eq!(err.reason_code(), "app_not_in_tenant"),
        other => panic!("expected a refused token request, got {other:?}"),
    }

    // A token of the global audience, issued while the emulator stood in for the global
    // cloud, is refused by the US Government Graph.
    emulate(&emulator, EmulatedCloud::Global);
    let (global, _) = configured(Cloud::Global);
    global.get_user(&connection, &user_id).await.unwrap();
    emulate(&emulator, EmulatedCloud::Usgov);
    match global.get_user(&connection, &user_id).await {
        Err(GraphError::Unauthorized { .. }) => {}
        other => panic!("expected 401 for the wrong audience, got {other:?}"),
    }

    // Every Graph request carried its own client-request-id.
    let sent: Vec<Option<String>> = emulator
        .shared()
        .throttle
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1.0/"))
        .map(|r| r.client_request_id)
        .collect();
    assert!(sent.len() >= 3, "{sent:?}");
    assert!(sent.iter().all(Option::is_some), "{sent:?}");
    let unique: std::collections::BTreeSet<_> = sent.iter().flatten().collect();
    assert_eq!(unique.len(), sent.len(), "a fresh id per request");
    store.close().await;
}

on_both_backends!(a_national_cloud_gets_and_needs_tokens_of_its_own_audience);
