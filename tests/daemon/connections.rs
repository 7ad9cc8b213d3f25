//! Tenant connections and the token vault against the Graph emulator, on both databases.

use std::path::Path;
use std::sync::Arc;

use graph_emulator::world::{AppSeed, FailureRule, IdentityFailure, TenantSeed, UserSeed};
use graph_emulator::Emulator;
use tenantd::audit::{self, Actor};
use tenantd::store::Store;
use tenantd::vault::connections::REFRESH_SLOT;
use tenantd::vault::connections::{self, NewAppConnection, NewDelegatedConnection, Status};
use tenantd::vault::identity::{token_claims, DevicePoll, IdentityClient, GRAPH_RESOURCE};
use tenantd::vault::tokens::TokenService;
use tenantd::vault::Keyring;

use crate::helpers::{tenantd_command, TestDb};
use crate::on_both_backends;

const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
const CANARY: &str = "CANARY-s3cr3t-7f1e2d";

struct Env {
    emulator: Emulator,
    store: Store,
    keys: Arc<Keyring>,
    key_line: zeroize::Zeroizing<String>,
    client_id: String,
    secret: String,
}

async fn env(db: &TestDb, secret: &str) -> Env {
    let emulator = Emulator::start_local().await.unwrap();
    let now = graph_emulator::clock::now();
    let (client_id, secret) = {
        let mut world = emulator.shared().world();
        world
            .seed_tenant(TenantSeed {
                id: Some(TENANT.into()),
                domain: "contoso.onmicrosoft.com".into(),
                display_name: None,
                skus: None,
            })
            .unwrap();
        world
            .seed_user(
                TENANT,
                UserSeed {
                    user_principal_name: "adele@contoso.onmicrosoft.com".into(),
                    display_name: None,
                    usage_location: Some("DE".into()),
                    license: Some("ENTERPRISEPACK".into()),
                },
                now,
                time::Duration::ZERO,
            )
            .unwrap();
        let (client_id, secret) = world
            .seed_app(
                TENANT,
                AppSeed {
                    client_id: None,
                    client_secret: Some(secret.into()),
                    public_client: false,
                    display_name: Some("tenantd".into()),
                    redirect_uris: vec![],
                    application_permissions: vec!["User.Read.All".into()],
                    delegated_permissions: vec!["User.Read".into(), "Mail.Send".into()],
                    admin_consented: true,
                },
                now,
            )
            .unwrap();
        (client_id, secret.unwrap())
    };
    let store = db.store().await;
    store.migrate().await.unwrap();
    let key_line = Keyring::new_key_line("k1");
    let keys = Arc::new(Keyring::parse(Path::new("test.keys"), &key_line).unwrap());
    Env {
        emulator,
        store,
        keys,
        key_line,
        client_id,
        secret,
    }
}

impl Env {
    fn identity(&self) -> IdentityClient {
        IdentityClient::new(url::Url::parse(&self.emulator.base_url()).unwrap())
    }

    fn service(&self) -> TokenService {
        TokenService::new(self.store.clone(), self.keys.clone(), self.identity())
    }

    async fn add_app(&self) -> connections::Connection {
        let authority = self.emulator.base_url();
        connections::add_app(
            &self.store,
            &self.keys,
            NewAppConnection {
                tenant_id: TENANT,
                client_id: &self.client_id,
                client_secret: &self.secret,
                label: Some("main"),
                make_default: false,
                authority: &authority,
            },
            Actor::Cli,
        )
        .await
        .unwrap()
    }

    fn tokens_issued(&self) -> u64 {
        self.emulator
            .shared()
            .counters()
            .get("tokens_issued")
            .copied()
            .unwrap_or(0)
    }

    fn fail(&self, failure: IdentityFailure) {
        self.emulator.shared().world().failures.push(FailureRule {
            tenant: Some(TENANT.into()),
            client_id: None,
            user: None,
            failure,
        });
    }

    fn clear_failures(&self) {
        self.emulator.shared().world().failures.clear();
    }
}

async fn fifty_concurrent_callers_cause_one_token_request(db: TestDb) {
    let env = env(&db, "s").await;
    let connection = env.add_app().await;
    assert!(
        connection.is_default,
        "the first app connection is the default"
    );
    let service = Arc::new(env.service());
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (service, connection) = (service.clone(), connection.clone());
        tasks.push(tokio::spawn(async move {
            service
                .access_token(&connection, GRAPH_RESOURCE)
                .await
                .unwrap()
                .expose()
                .clone()
        }));
    }
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.unwrap());
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    assert_eq!(env.tokens_issued(), 1, "exactly one token request");
    let claims = token_claims(&tokens[0]).unwrap();
    assert_eq!(claims["tid"], TENANT);
    let stored = connections::get(&env.store, &connection.id).await.unwrap();
    assert_eq!(stored.status, Status::Active);
    assert!(stored.last_token_at.is_some());
    assert!(stored.token_expires_at.unwrap() > tenantd::clock::now_unix() + 3000);
}

async fn failures_move_the_connection_to_the_status_that_needs_a_human(db: TestDb) {
    let env = env(&db, "s").await;
    let connection = env.add_app().await;
    let service = env.service();
    env.fail(IdentityFailure::ConsentRequired);
    let err = service
        .access_token(&connection, GRAPH_RESOURCE)
        .await
        .unwrap_err();
    assert_eq!(err.reason_code(), "consent_required");
    let stored = connections::get(&env.store, &connection.id).await.unwrap();
    assert_eq!(
        (stored.status, stored.reason.as_deref()),
        (Status::ConsentRequired, Some("consent_required"))
    );
    assert!(stored.last_failure_at.is_some());
    env.clear_failures();
    env.fail(IdentityFailure::BadClientSecret);
    let err = service
        .access_token(&stored, GRAPH_RESOURCE)
        .await
        .unwrap_err();
    assert_eq!(err.reason_code(), "client_secret_invalid");
    assert_eq!(
        connections::get(&env.store, &connection.id)
            .await
            .unwrap()
            .status,
        Status::Error
    );
    env.clear_failures();
    let recovered = connections::get(&env.store, &connection.id).await.unwrap();
    service
        .access_token(&recovered, GRAPH_RESOURCE)
        .await
        .unwrap();
    assert_eq!(
        connections::get(&env.store, &connection.id)
            .await
            .unwrap()
            .status,
        Status::Active
    );
    let trail = audit::for_tenant(&env.store, TENANT).await.unwrap();
    let events: Vec<(&str, Option<&str>)> = trail
        .iter()
        .map(|e| (e.event.as_str(), e.reason.as_deref()))
        .collect();
    assert!(
        events.contains(&("status_changed", Some("consent_required"))),
        "{events:?}"
    );
    assert!(
        events.contains(&("token_failed", Some("client_secret_invalid"))),
        "{events:?}"
    );
    assert!(
        events.contains(&("status_changed", Some("active"))),
        "{events:?}"
    );
}

/// Signs adele in through the device code flow, as `tenant connect` does.
async fn device_code_sign_in(env: &Env) -> connections::Connection {
    let identity = env.identity();
    let code = identity
        .start_device_code(TENANT, &env.client_id, "offline_access User.Read")
        .await
        .unwrap();
    assert!(matches!(
        identity
            .poll_device_code(TENANT, &env.client_id, code.device_code.expose())
            .await
            .unwrap(),
        DevicePoll::Pending
    ));
    assert!(matches!(
        identity
            .poll_device_code(TENANT, &env.client_id, code.device_code.expose())
            .await
            .unwrap(),
        DevicePoll::SlowDown
    ));
    graph_emulator::identity::approve_device_code(
        &mut env.emulator.shared().world(),
        &code.user_code,
        "adele@contoso.onmicrosoft.com",
    )
    .unwrap();
    let DevicePoll::Done(tokens) = identity
        .poll_device_code(TENANT, &env.client_id, code.device_code.expose())
        .await
        .unwrap()
    else {
        panic!("approved");
    };
    let claims = token_claims(tokens.access_token.expose()).unwrap();
    let authority = env.emulator.base_url();
    connections::add_delegated(
        &env.store,
        &env.keys,
        NewDelegatedConnection {
            tenant_id: claims["tid"].as_str().unwrap(),
            client_id: &env.client_id,
            user_id: claims["oid"].as_str().unwrap(),
            user_name: claims["upn"].as_str(),
            authority: &authority,
            refresh_token: tokens.refresh_token.as_ref().unwrap().expose(),
        },
        Actor::Cli,
    )
    .await
    .unwrap()
}

async fn delegated_refresh_rotates_and_revocation_needs_reconsent(db: TestDb) {
    let env = env(&db, "s").await;
    let connection = device_code_sign_in(&env).await;
    assert_eq!(
        connection.user_name.as_deref(),
        Some("adele@contoso.onmicrosoft.com")
    );
    let (first, _) = connections::load_token(&env.store, &env.keys, &connection.id, REFRESH_SLOT)
        .await
        .unwrap()
        .unwrap();
    let service = env.service();
    let token = service
        .access_token(&connection, GRAPH_RESOURCE)
        .await
        .unwrap();
    assert_eq!(token_claims(token.expose()).unwrap()["idtyp"], "user");
    let (second, _) = connections::load_token(&env.store, &env.keys, &connection.id, REFRESH_SLOT)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(*first, *second, "the rotated refresh token is persisted");

    env.fail(IdentityFailure::RefreshTokenRevoked);
    // Force a refresh: forget the cached access token.
    db.execute("DELETE FROM connection_tokens WHERE resource <> 'refresh'")
        .await;
    let err = service
        .access_token(&connection, GRAPH_RESOURCE)
        .await
        .unwrap_err();
    assert_eq!(err.reason_code(), "refresh_token_revoked");
    assert_eq!(
        connections::get(&env.store, &connection.id)
            .await
            .unwrap()
            .status,
        Status::NeedsReconsent
    );
    env.clear_failures();
    env.fail(IdentityFailure::MfaRequired);
    service
        .access_token(&connection, GRAPH_RESOURCE)
        .await
        .unwrap_err();
    assert_eq!(
        connections::get(&env.store, &connection.id)
            .await
            .unwrap()
            .status,
        Status::InteractionRequired
    );
}

/// Reliability: ten concurrent callers needing a delegated connection's token cause one
/// refresh (the refresh token is rotated once and the newest one kept); and a crash between
/// the identity platform's answer and its commit loses nothing: the refresh token still stored
/// works after a restart (Microsoft rotates refresh tokens on use without revoking the old one:
/// entra-docs, refresh-tokens.md).
async fn concurrent_refreshes_are_one_and_a_crash_before_the_commit_recovers(db: TestDb) {
    let env = env(&db, "s").await;
    let connection = device_code_sign_in(&env).await;
    let stored = || async {
        let (token, _) =
            connections::load_token(&env.store, &env.keys, &connection.id, REFRESH_SLOT)
                .await
                .unwrap()
                .unwrap();
        token.to_string()
    };
    let first = stored().await;
    db.execute("DELETE FROM connection_tokens WHERE resource <> 'refresh'")
        .await;
    env.emulator.shared().throttle.clear_requests();
    let service = Arc::new(env.service());
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (service, connection) = (service.clone(), connection.clone());
        callers.spawn(async move { service.access_token(&connection, GRAPH_RESOURCE).await });
    }
    while let Some(done) = callers.join_next().await {
        done.unwrap().unwrap();
    }
    let refreshes = env
        .emulator
        .shared()
        .throttle
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/oauth2/v2.0/token"))
        .count();
    assert_eq!(refreshes, 1, "one refresh for ten callers");
    let second = stored().await;
    assert_ne!(first, second, "the rotated refresh token is kept");
    // The identity platform answers a refresh, and the process dies before storing it.
    let lost = env
        .identity()
        .refresh(
            TENANT,
            &env.client_id,
            None,
            &second,
            "offline_access User.Read",
        )
        .await
        .unwrap();
    assert!(lost.refresh_token.is_some());
    assert_eq!(stored().await, second, "nothing was committed");
    // After the restart (a new token service), the stored refresh token still works.
    db.execute("DELETE FROM connection_tokens WHERE resource <> 'refresh'")
        .await;
    let restarted = env.service();
    restarted
        .access_token(&connection, GRAPH_RESOURCE)
        .await
        .unwrap();
    assert_ne!(stored().await, second, "and its successor is kept");
}

async fn moved_or_altered_ciphertexts_do_not_decrypt(db: TestDb) {
    let env = env(&db, "s").await;
    let first = env.add_app().await;
    let authority = env.emulator.base_url();
    let second = connections::add_app(
        &env.store,
        &env.keys,
        NewAppConnection {
            tenant_id: "11111111-2222-3333-4444-555555555555",
            client_id: &env.client_id,
            client_secret: "other",
            label: None,
            make_default: false,
            authority: &authority,
        },
        Actor::Cli,
    )
    .await
    .unwrap();
    assert_eq!(
        *connections::client_secret(&env.store, &env.keys, &first.id)
            .await
            .unwrap(),
        env.secret
    );
    db.execute(&format!("UPDATE connections SET client_secret = (SELECT client_secret FROM connections WHERE id = '{}') WHERE id = '{}'", first.id, second.id)).await;
    let err = connections::client_secret(&env.store, &env.keys, &second.id)
        .await
        .unwrap_err();
    assert_eq!(err.reason_code(), "vault_decrypt_failed");
    db.execute(&format!("UPDATE connections SET client_secret = substr(client_secret, 1, length(client_secret) - 2) || 'AA' WHERE id = '{}'", first.id)).await;
    let err = connections::client_secret(&env.store, &env.keys, &first.id)
        .await
        .unwrap_err();
    assert_eq!(err.reason_code(), "vault_decrypt_failed");
}

async fn keys_rotate_leaves_nothing_under_the_old_key(db: TestDb) {
    let mut env = env(&db, "s").await;
    let connection = env.add_app().await;
    env.service()
        .access_token(&connection, GRAPH_RESOURCE)
        .await
        .unwrap();
    let types = vec!["created".to_string()];
    let subscription = tenantd::subscriptions::declare(
        &env.store,
        &env.keys,
        &tenantd::subscriptions::Desired {
            tenant_id: "84bd8158-6d4d-4958-8b9f-9d6445542f95",
            resource: "users/u1/messages",
            change_types: &types,
            origin: tenantd::subscriptions::Origin::Cli,
            include_resource_data: false,
        },
    )
    .await
    .unwrap();
    let client_state =
        tenantd::subscriptions::client_state(&env.store, &env.keys, &subscription.id)
            .await
            .unwrap();
    // A rich subscription also holds its certificate's key, sealed.
    let rich = tenantd::subscriptions::declare(
        &env.store,
        &env.keys,
        &tenantd::subscriptions::Desired {
            tenant_id: "84bd8158-6d4d-4958-8b9f-9d6445542f95",
            resource: "chats/getAllMessages",
            change_types: &types,
            origin: tenantd::subscriptions::Origin::Cli,
            include_resource_data: true,
        },
    )
    .await
    .unwrap();
    tenantd::subscriptions::record_created(
        &env.store,
        &rich.id,
        "g-rich",
        &connection.id,
        4_102_444_800,
    )
    .await
    .unwrap();
    let sealed_key = db
        .strings("SELECT encryption_key FROM subscriptions WHERE encryption_key IS NOT NULL")
        .await
        .remove(0);
    let pkcs8 = env
        .keys
        .open(
            &sealed_key,
            tenantd::vault::Slot {
                table: "subscriptions",
                column: "encryption_key",
                row: &rich.id,
            },
        )
        .unwrap();
    let raw = db.raw_contents().await;
    assert!(
        !raw.windows(32).any(|w| w == &pkcs8[pkcs8.len() - 32..]),
        "the certificate's private key is not in the database in plaintext"
    );
    // The new key first, the old one kept for reading.
    let k2 = Keyring::new_key_line("k2");
    let rotating = Arc::new(
        Keyring::parse(
            Path::new("k"),
            &format!("{}{}", k2.as_str(), env.key_line.as_str()),
        )
        .unwrap(),
    );
    let mut seen = 0;
    let report = tenantd::key_check::rotate(&env.store, &rotating, |n| seen = n)
        .await
        .unwrap();
    assert_eq!(
        report.rotated, 5,
        "the client secret, the access token, both clientStates and the rich one's certificate key: {report:?}"
    );
    assert_eq!(seen, 5);
    assert!(report.complete(), "{report:?}");
    let again = tenantd::key_check::rotate(&env.store, &rotating, |_| {})
        .await
        .unwrap();
    assert_eq!(
        (again.rotated, again.current),
        (0, 5),
        "resumable: nothing left to do"
    );
    let mut sealed = db.strings("SELECT client_secret FROM connections").await;
    sealed.extend(db.strings("SELECT token FROM connection_tokens").await);
    sealed.extend(db.strings("SELECT client_state FROM subscriptions").await);
    sealed.extend(
        db.strings("SELECT encryption_key FROM subscriptions WHERE encryption_key IS NOT NULL")
            .await,
    );
    assert_eq!(sealed.len(), 5);
    assert!(
        sealed.iter().all(|c| c.starts_with("tdv1.k2.")),
        "no row is left under the old key: {sealed:?}"
    );
    // Everything decrypts with the new key alone.
    env.keys = Arc::new(Keyring::parse(Path::new("k"), &k2).unwrap());
    assert_eq!(
        *connections::client_secret(&env.store, &env.keys, &connection.id)
            .await
            .unwrap(),
        env.secret
    );
    assert!(
        connections::load_token(&env.store, &env.keys, &connection.id, GRAPH_RESOURCE)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        *tenantd::subscriptions::client_state(&env.store, &env.keys, &subscription.id)
            .await
            .unwrap(),
        *client_state
    );
    let checks = tenantd::subscriptions::checks_for(&env.store, &env.keys, &["g-rich"])
        .await
        .unwrap();
    assert!(checks["g-rich"].rich.is_some(), "the certificate key opens");
}

/// A key file that is not the one the secrets were sealed with stops the daemon at start
/// (exit 1, the key named, the fix given, `/readyz` never ready), as does one missing a key
/// the database still names; `keys verify` counts per key id; `keys rotate` re-seals every
/// value it can, names each one it cannot (table, column, row, reason), exits 1 until none is
/// left, and finishes when run again.
async fn the_vault_proves_its_key_and_rotation_names_what_it_cannot_open(db: TestDb) {
    let env = env(&db, CANARY).await;
    let connection = env.add_app().await;
    env.service()
        .access_token(&connection, GRAPH_RESOURCE)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write_keys = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(
            &path,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        )
        .unwrap();
        path
    };
    let run = |keys: &std::path::Path, args: &[&str]| {
        let output = tenantd_command()
            .args(["--database-url", db.url()])
            .args(args)
            .env("TENANTD_SECRETS__KEY_FILE", keys)
            .env("TENANTD_ADMIN__BIND", "127.0.0.1:0")
            .env("TENANTD_LISTENER__BIND", "127.0.0.1:0")
            .output()
            .unwrap();
        let text = crate::helpers::combined_output(&output);
        assert!(!text.contains(CANARY), "a secret was printed: {text}");
        (output.status.code(), text)
    };
    let own = write_keys("own.keys", &env.key_line);
    // Same key id, other bytes: the wrong key.
    let wrong = write_keys("wrong.keys", &Keyring::new_key_line("k1"));
    let (code, text) = run(&wrong, &["run"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("key `k1` in secrets.key_file opens none"),
        "{text}"
    );
    assert!(text.contains("fix: point secrets.key_file"), "{text}");
    assert!(!text.contains("tenantd is running"), "never ready: {text}");
    // Another key id altogether: the database's key is missing.
    let other = write_keys("other.keys", &Keyring::new_key_line("k9"));
    let (code, text) = run(&other, &["run"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("sealed with key `k1`"), "{text}");
    assert!(
        text.contains("which secrets.key_file does not hold"),
        "{text}"
    );
    let (code, text) = run(&other, &["keys", "verify"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("k1 ") && l.contains("missing")),
        "{text}"
    );
    let (code, text) = run(&own, &["keys", "verify", "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let uses: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(uses[0]["key_id"], "k1");
    assert_eq!(uses[0]["opened"], 2, "the client secret and the token");

    // One value the keys cannot open (sealed under a key nobody has any more).
    let lost = Keyring::parse(Path::new("k"), &Keyring::new_key_line("k0")).unwrap();
    let forgotten = lost.seal(
        b"lost",
        tenantd::vault::Slot {
            table: "connections",
            column: "client_secret",
            row: "c-lost",
        },
    );
    db.execute(&format!(
        "INSERT INTO connections (id, tenant_id, client_id, auth_mode, status, authority, client_secret, created_at, updated_at) \
         SELECT 'c-lost', tenant_id, 'other-app', auth_mode, status, authority, '{forgotten}', created_at, updated_at FROM connections WHERE id = '{}'",
        connection.id
    ))
    .await;
    let rotating = write_keys(
        "rotating.keys",
        &format!(
            "{}{}",
            Keyring::new_key_line("k2").as_str(),
            env.key_line.as_str()
        ),
    );
    let (code, text) = run(&rotating, &["keys", "rotate"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("re-encrypted 2 secret(s) under key `k2`"),
        "{text}"
    );
    assert!(
        text.contains("not re-encrypted: connections.client_secret row c-lost (vault_key_missing)"),
        "{text}"
    );
    db.execute("DELETE FROM connections WHERE id = 'c-lost'")
        .await;
    let (code, text) = run(&rotating, &["keys", "rotate"]);
    assert_eq!(code, Some(0), "finishes when run again: {text}");
    assert!(
        text.contains("re-encrypted 0 secret(s) under key `k2`; 2 already were"),
        "{text}"
    );
}

async fn secrets_never_leak_into_the_database_listings_or_metrics(db: TestDb) {
    let env = env(&db, CANARY).await;
    let connection = env.add_app().await;
    let token = env
        .service()
        .access_token(&connection, GRAPH_RESOURCE)
        .await
        .unwrap();
    let raw = db.raw_contents().await;
    let contains = |haystack: &[u8], needle: &str| {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    assert!(
        !contains(&raw, CANARY),
        "the client secret is not in the database in plaintext"
    );
    assert!(
        !contains(&raw, token.expose()),
        "the access token is not in the database in plaintext"
    );
    let listed =
        serde_json::to_string(&connections::list(&env.store, None).await.unwrap()).unwrap();
    assert!(!listed.contains(CANARY) && !listed.contains(token.expose()));
    let debug = format!("{connection:?} {token:?}");
    assert!(!debug.contains(CANARY) && !debug.contains(token.expose()));
    let metrics = tenantd::metrics::render(&tenantd::metrics::recorder());
    assert!(!metrics.contains(CANARY) && !metrics.contains(token.expose()));
    // Through the binary: list and a failing check print no secret either.
    let output = tenantd_command()
        .args(["--database-url", db.url(), "tenant", "list", "--json"])
        .env("TENANTD_SECRETS__KEY_FILE", "/nonexistent/keys")
        .output()
        .unwrap();
    let text = crate::helpers::combined_output(&output);
    assert!(!text.contains(CANARY), "{text}");
}

async fn b2c_identities_are_refused(db: TestDb) {
    let env = env(&db, "s").await;
    let err = connections::add_app(
        &env.store,
        &env.keys,
        NewAppConnection {
            tenant_id: TENANT,
            client_id: &env.client_id,
            client_secret: "x",
            label: None,
            make_default: false,
            authority: "https://contoso.b2clogin.com/contoso.onmicrosoft.com/B2C_1_signin",
        },
        Actor::Cli,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason_code(), "identity_not_allowed");
    let connection = env.add_app().await;
    db.execute(&format!(
        "UPDATE connections SET authority = 'https://contoso.ciamlogin.com/' WHERE id = '{}'",
        connection.id
    ))
    .await;
    let stored = connections::get(&env.store, &connection.id).await.unwrap();
    let err = env
        .service()
        .access_token(&stored, GRAPH_RESOURCE)
        .await
        .unwrap_err();
    assert_eq!(err.reason_code(), "identity_not_allowed");
    assert_eq!(env.tokens_issued(), 0, "no token request was made");
}

async fn removal_deletes_secrets_and_keeps_the_audit_trail(db: TestDb) {
    let env = env(&db, CANARY).await;
    let connection = env.add_app().await;
    env.service()
        .access_token(&connection, GRAPH_RESOURCE)
        .await
        .unwrap();
    assert_eq!(
        connections::remove(&env.store, TENANT, None, Actor::Cli)
            .await
            .unwrap(),
        1
    );
    assert!(connections::list(&env.store, None)
        .await
        .unwrap()
        .is_empty());
    assert!(
        connections::load_token(&env.store, &env.keys, &connection.id, GRAPH_RESOURCE)
            .await
            .unwrap()
            .is_none()
    );
    let events: Vec<String> = audit::for_tenant(&env.store, TENANT)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(events.first().map(String::as_str), Some("connection_added"));
    assert_eq!(
        events.last().map(String::as_str),
        Some("connection_removed")
    );
    assert!(connections::remove(&env.store, TENANT, None, Actor::Cli)
        .await
        .is_err());
}

async fn the_cli_adds_lists_checks_and_removes(db: TestDb) {
    let env = env(&db, CANARY).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{CANARY}\n")).unwrap();
    let keys = dir.path().join("vault.keys");
    let run = |args: &[&str]| {
        let output = tenantd_command()
            .args(["--database-url", db.url()])
            .args(args)
            .env("TENANTD_SECRETS__KEY_FILE", &keys)
            .env("TENANTD_IDENTITY__AUTHORITY", env.emulator.base_url())
            .env(
                "TENANTD_LISTENER__PUBLIC_URL",
                "https://tenantd.example.com",
            )
            .output()
            .unwrap();
        let text = crate::helpers::combined_output(&output);
        assert!(!text.contains(CANARY), "a secret was printed: {text}");
        (output.status.code(), text)
    };
    let (code, text) = run(&[
        "tenant",
        "add-app",
        "--tenant",
        TENANT,
        "--client-id",
        &env.client_id,
        "--client-secret-file",
        secret_file.to_str().unwrap(),
    ]);
    assert_eq!(
        code,
        Some(1),
        "no key file yet, and a configured one is never invented: {text}"
    );
    assert!(text.contains("keys generate"), "{text}");
    let (code, _) = run(&["keys", "generate", "--out", keys.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    let (code, text) = run(&[
        "tenant",
        "add-app",
        "--tenant",
        TENANT,
        "--client-id",
        &env.client_id,
        "--client-secret-file",
        secret_file.to_str().unwrap(),
        "--name",
        "main",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run(&["tenant", "list", "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let listed: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(listed[0]["tenant_id"], TENANT);
    // Every connection is Microsoft's (migration 0016's default), and says so.
    assert_eq!(listed[0]["provider"], "microsoft", "{text}");
    assert_eq!(listed[0]["status"], "active");
    let (code, text) = run(&["tenant", "check", "--tenant", TENANT]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("Microsoft Graph: granted: User.Read.All"),
        "{text}"
    );
    assert!(
        text.contains("Teams Developer Portal: granted: (none)"),
        "{text}"
    );
    env.fail(IdentityFailure::ConsentRequired);
    db.execute("DELETE FROM connection_tokens").await;
    let (code, text) = run(&["tenant", "check", "--tenant", TENANT]);
    assert_eq!(
        code,
        Some(0),
        "consent failures are expected, not errors: {text}"
    );
    assert!(
        text.contains("missing consent (expected: consent_required)"),
        "{text}"
    );
    assert!(
        text.contains("admin consent URL: ") && text.contains("/v2.0/adminconsent?client_id="),
        "{text}"
    );
    let (code, text) = run(&["tenant", "consent-url", "--tenant", TENANT]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("redirect_uri=https%3A%2F%2Ftenantd.example.com%2Foauth%2Fconsent-callback"),
        "{text}"
    );
    let (code, text) = run(&["tenant", "list"]);
    assert_eq!(code, Some(0));
    assert!(text.contains("consent_required"), "{text}");
    let (code, text) = run(&["keys", "rotate"]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run(&["tenant", "remove", "--tenant", TENANT]);
    assert_eq!(code, Some(0), "{text}");
    let (code, _) = run(&[
        "tenant",
        "add-app",
        "--tenant",
        "contoso.onmicrosoft.com",
        "--client-id",
        "x",
        "--client-secret-file",
        secret_file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "a domain is not a tenant key");
}

async fn the_sweep_renews_delegated_tokens_before_they_lapse(db: TestDb) {
    // The recorder first: gauges set before it is installed go nowhere (run alone, this test
    // would otherwise install it only after the sweeps).
    let _ = tenantd::metrics::recorder();
    let env = env(&db, "s").await;
    let connection = device_code_sign_in(&env).await;
    let service = env.service();
    let (before, _) = connections::load_token(&env.store, &env.keys, &connection.id, REFRESH_SLOT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        service.sweep().await.unwrap(),
        tenantd::vault::tokens::SweepReport {
            renewed: 1,
            failed: 0
        }
    );
    let (after, _) = connections::load_token(&env.store, &env.keys, &connection.id, REFRESH_SLOT)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(*before, *after, "the refresh token was used and rotated");
    assert_eq!(
        service.sweep().await.unwrap().renewed,
        0,
        "a fresh token is left alone"
    );
    // Short-lived tokens are renewed on every sweep that finds them inside the horizon.
    env.emulator
        .shared()
        .set_settings(graph_emulator::Settings {
            access_token_lifetime_seconds: 120,
            ..env.emulator.shared().settings()
        });
    db.execute("DELETE FROM connection_tokens WHERE resource <> 'refresh'")
        .await;
    assert_eq!(service.sweep().await.unwrap().renewed, 1);
    assert_eq!(service.sweep().await.unwrap().renewed, 1);
    let metrics = tenantd::metrics::render(&tenantd::metrics::recorder());
    assert!(
        metrics.contains("tenantd_connections{status=\"active\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("tenantd_token_soonest_expiry_seconds"));
    // A revoked grant surfaces at the next sweep.
    env.fail(IdentityFailure::RefreshTokenExpired);
    db.execute("DELETE FROM connection_tokens WHERE resource <> 'refresh'")
        .await;
    assert_eq!(service.sweep().await.unwrap().failed, 1);
    let stored = connections::get(&env.store, &connection.id).await.unwrap();
    assert_eq!(
        (stored.status, stored.reason.as_deref()),
        (Status::NeedsReconsent, Some("refresh_token_expired"))
    );
    assert_eq!(
        service.sweep().await.unwrap(),
        tenantd::vault::tokens::SweepReport::default(),
        "no retry storm"
    );
}

async fn transient_failures_keep_the_connection_active_until_the_limit(db: TestDb) {
    let env = env(&db, "s").await;
    let connection = env.add_app().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let service = TokenService::new(
        env.store.clone(),
        env.keys.clone(),
        IdentityClient::new(url::Url::parse(&dead).unwrap()),
    );
    for attempt in 1..=tenantd::vault::tokens::TRANSIENT_LIMIT {
        let err = service
            .access_token(&connection, GRAPH_RESOURCE)
            .await
            .unwrap_err();
        assert_eq!(err.reason_code(), "identity_unavailable");
        let stored = connections::get(&env.store, &connection.id).await.unwrap();
        let expected = if attempt < tenantd::vault::tokens::TRANSIENT_LIMIT {
            Status::Active
        } else {
            Status::Error
        };
        assert_eq!(stored.status, expected, "after {attempt} failures");
    }
}

/// The daemon on port 0, sharing the test's database, keys and emulator.
async fn daemon(env: &Env, db: &TestDb) -> crate::helpers::TestApp {
    let dir = std::env::temp_dir().join(format!("tenantd-keys-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&dir, env.key_line.as_bytes()).unwrap();
    std::fs::set_permissions(
        &dir,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    let mut config = crate::helpers::test_config(db);
    config.secrets.key_file = dir;
    config.identity.authority = url::Url::parse(&env.emulator.base_url()).unwrap();
    config.identity.delegated_scopes = vec!["offline_access".into(), "User.Read".into()];
    crate::helpers::spawn_app_with(config).await
}

async fn get_text(url: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    (status, location.unwrap_or(text))
}

async fn the_consent_callback_reactivates_connections_once(db: TestDb) {
    let env = env(&db, "s").await;
    let connection = env.add_app().await;
    env.fail(IdentityFailure::ConsentRequired);
    env.service()
        .access_token(&connection, GRAPH_RESOURCE)
        .await
        .unwrap_err();
    env.clear_failures();
    let app = daemon(&env, &db).await;
    let redirect = format!("http://{}/oauth/consent-callback", app.public);
    let refused_state =
        tenantd::oauth::start_consent(&env.store, TENANT, &env.client_id, &redirect)
            .await
            .unwrap();
    let (status, text) = get_text(&format!("{redirect}?admin_consent=True&error=consent_required&error_description=AADSTS65004&state={refused_state}")).await;
    assert_eq!(
        (status, text.contains("not granted")),
        (200, true),
        "{text}"
    );
    assert_eq!(
        connections::get(&env.store, &connection.id)
            .await
            .unwrap()
            .status,
        Status::ConsentRequired
    );

    let state = tenantd::oauth::start_consent(&env.store, TENANT, &env.client_id, &redirect)
        .await
        .unwrap();
    // The tenant in the redirect is not trusted; the one recorded with the state is.
    let url = format!(
        "{redirect}?admin_consent=True&tenant=00000000-0000-0000-0000-000000000000&state={state}"
    );
    let (status, text) = get_text(&url).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(TENANT) && text.contains("1 connection(s) active again"),
        "{text}"
    );
    assert_eq!(
        connections::get(&env.store, &connection.id)
            .await
            .unwrap()
            .status,
        Status::Active
    );
    assert_eq!(get_text(&url).await.0, 400, "a state is single use");
    assert_eq!(
        get_text(&format!("{redirect}?admin_consent=True&state=forged"))
            .await
            .0,
        400
    );
    let stale = tenantd::oauth::start_consent(&env.store, TENANT, &env.client_id, &redirect)
        .await
        .unwrap();
    db.execute(&format!(
        "UPDATE oauth_states SET expires_at = 0 WHERE state = '{stale}'"
    ))
    .await;
    assert_eq!(
        get_text(&format!("{redirect}?admin_consent=True&state={stale}"))
            .await
            .0,
        400,
        "states expire"
    );
    let events: Vec<String> = audit::for_tenant(&env.store, TENANT)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert!(
        events.contains(&"consent_refused".to_string())
            && events.contains(&"consent_granted".to_string()),
        "{events:?}"
    );
    app.stop().await.unwrap();
}

async fn the_browser_sign_in_completes_on_the_callback(db: TestDb) {
    let env = env(&db, CANARY).await;
    env.add_app().await;
    let app = daemon(&env, &db).await;
    let redirect = format!("http://{}/oauth/callback", app.public);
    env.emulator
        .shared()
        .world()
        .apps
        .get_mut(&env.client_id)
        .unwrap()
        .redirect_uris
        .push(redirect.clone());
    let authorize = || async {
        tenantd::oauth::start_authorize(
            &env.store,
            &env.keys,
            &env.identity(),
            TENANT,
            &env.client_id,
            &redirect,
            "offline_access User.Read",
        )
        .await
        .unwrap()
    };
    let url = authorize().await;
    assert!(url.contains("code_challenge_method=S256"));
    // Microsoft's sign-in page: the emulator signs in the user named by login_hint.
    let (status, location) =
        get_text(&format!("{url}&login_hint=adele@contoso.onmicrosoft.com")).await;
    assert_eq!(status, 302);
    assert!(location.starts_with(&redirect), "{location}");
    let (status, text) = get_text(&location).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("Connected adele@contoso.onmicrosoft.com"),
        "{text}"
    );
    assert!(!text.contains("code=") && !text.contains(CANARY));
    let delegated: Vec<_> = connections::list(&env.store, Some(TENANT))
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.auth_mode == tenantd::vault::connections::AuthMode::Delegated)
        .collect();
    assert_eq!(delegated.len(), 1);
    assert!(
        connections::load_token(&env.store, &env.keys, &delegated[0].id, REFRESH_SLOT)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        get_text(&location).await.0,
        400,
        "the callback cannot be replayed"
    );
    // A code the identity platform does not know (forged, expired or used): reported as
    // `invalid_grant` with its AADSTS code, not as a refresh token's expiry.
    let url = authorize().await;
    let state = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .find(|(key, _)| key == "state")
        .map(|(_, value)| value.into_owned())
        .unwrap();
    let (status, text) = get_text(&format!("{redirect}?code=forged-code&state={state}")).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("invalid_grant"), "{text}");
    assert!(text.contains("AADSTS70008"), "{text}");
    assert!(!text.contains("refresh_token_expired"), "{text}");
    app.stop().await.unwrap();
}

async fn disabled_connections_get_no_tokens(db: TestDb) {
    let env = env(&db, "s").await;
    let connection = env.add_app().await;
    db.execute(&format!(
        "UPDATE connections SET status = 'disabled' WHERE id = '{}'",
        connection.id
    ))
    .await;
    let stored = connections::get(&env.store, &connection.id).await.unwrap();
    let err = env
        .service()
        .access_token(&stored, GRAPH_RESOURCE)
        .await
        .unwrap_err();
    assert_eq!(err.reason_code(), "connection_disabled");
    assert_eq!(env.tokens_issued(), 0);
}

async fn tenant_connect_signs_in_by_device_code(db: TestDb) {
    use std::io::BufRead;
    let env = env(&db, CANARY).await;
    env.emulator
        .shared()
        .set_settings(graph_emulator::Settings {
            device_code_interval_seconds: 1,
            ..env.emulator.shared().settings()
        });
    let keys = crate::helpers::test_key_file();
    let mut child = tenantd_command()
        .args([
            "--database-url",
            db.url(),
            "tenant",
            "connect",
            "--tenant",
            TENANT,
            "--client-id",
            &env.client_id,
        ])
        .env("TENANTD_SECRETS__KEY_FILE", &keys)
        .env("TENANTD_IDENTITY__AUTHORITY", env.emulator.base_url())
        .env(
            "TENANTD_IDENTITY__DELEGATED_SCOPES",
            "[\"offline_access\", \"User.Read\"]",
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.contains("/devicelogin") && first.contains("enter the code"),
        "{first}"
    );
    let code = first
        .split("enter the code ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    // Let it poll while pending, then approve.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    graph_emulator::identity::approve_device_code(
        &mut env.emulator.shared().world(),
        &code,
        "adele@contoso.onmicrosoft.com",
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let text = format!(
        "{}\n{}",
        rest.join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("connected: delegated connection"), "{text}");
    let delegated = connections::list(&env.store, Some(TENANT)).await.unwrap();
    assert_eq!(delegated.len(), 1);
    assert_eq!(
        delegated[0].user_name.as_deref(),
        Some("adele@contoso.onmicrosoft.com")
    );
    assert_eq!(delegated[0].status, Status::Active);
}

on_both_backends!(
    concurrent_refreshes_are_one_and_a_crash_before_the_commit_recovers,
    the_vault_proves_its_key_and_rotation_names_what_it_cannot_open,
    disabled_connections_get_no_tokens,
    tenant_connect_signs_in_by_device_code,
    the_consent_callback_reactivates_connections_once,
    the_browser_sign_in_completes_on_the_callback,
    the_sweep_renews_delegated_tokens_before_they_lapse,
    transient_failures_keep_the_connection_active_until_the_limit,
    fifty_concurrent_callers_cause_one_token_request,
    failures_move_the_connection_to_the_status_that_needs_a_human,
    delegated_refresh_rotates_and_revocation_needs_reconsent,
    moved_or_altered_ciphertexts_do_not_decrypt,
    keys_rotate_leaves_nothing_under_the_old_key,
    secrets_never_leak_into_the_database_listings_or_metrics,
    b2c_identities_are_refused,
    removal_deletes_secrets_and_keeps_the_audit_trail,
    the_cli_adds_lists_checks_and_removes,
);
