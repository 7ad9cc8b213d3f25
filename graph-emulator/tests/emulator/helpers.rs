//! Starting an emulator, seeding it, getting tokens, and a webhook receiver that answers
//! handshakes the way a test asks and records what Graph posts.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use graph_emulator::Emulator;
use serde_json::{json, Value};

pub(crate) const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";
pub(crate) const DOMAIN: &str = "contoso.onmicrosoft.com";
pub(crate) const GRAPH_DEFAULT: &str = "https://graph.microsoft.com/.default";

/// A running emulator with a seeded tenant and app.
pub(crate) struct Env {
    pub(crate) emulator: Emulator,
    pub(crate) http: reqwest::Client,
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

impl Env {
    /// An emulator with tenant `TENANT` and an admin-consented app holding `roles` and the
    /// delegated `scopes`.
    pub(crate) async fn with(roles: &[&str], scopes: &[&str]) -> Self {
        let emulator = Emulator::start_local().await.expect("emulator starts");
        let http = client();
        let env = Self {
            emulator,
            http,
            client_id: String::new(),
            client_secret: String::new(),
        };
        env.control_post("/tenants", json!({"id": TENANT, "domain": DOMAIN}))
            .await
            .assert_status(201);
        let app = env
            .control_post(
                &format!("/tenants/{TENANT}/apps"),
                json!({
                    "displayName": "tenantd tests",
                    "applicationPermissions": roles,
                    "delegatedPermissions": scopes,
                    "redirectUris": ["http://127.0.0.1:9/callback"],
                }),
            )
            .await
            .assert_status(201)
            .json;
        Self {
            client_id: app["clientId"].as_str().unwrap().to_string(),
            client_secret: app["clientSecret"].as_str().unwrap().to_string(),
            ..env
        }
    }

    pub(crate) async fn standard() -> Self {
        Self::with(
            &[
                "User.ReadWrite.All",
                "Organization.Read.All",
                "Mail.ReadWrite",
                "Mail.Send",
                "Calendars.ReadWrite",
                "Files.ReadWrite.All",
                "Chat.Create",
                "Chat.Read.All",
                "Application.ReadWrite.All",
            ],
            &[
                "User.Read",
                "Mail.Send",
                "Mail.ReadWrite",
                "ChatMessage.Send",
                "Chat.ReadWrite",
                "Calendars.ReadWrite",
                "https://dev.teams.microsoft.com/AppDefinitions.ReadWrite",
            ],
        )
        .await
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emulator.base_url())
    }

    pub(crate) async fn control_post(&self, path: &str, body: Value) -> Answer {
        Answer::from(
            self.http
                .post(self.url(&format!("/_emulator{path}")))
                .json(&body)
                .send()
                .await
                .expect("control call"),
        )
        .await
    }

    pub(crate) async fn control_put(&self, path: &str, body: Value) -> Answer {
        Answer::from(
            self.http
                .put(self.url(&format!("/_emulator{path}")))
                .json(&body)
                .send()
                .await
                .expect("control call"),
        )
        .await
    }

    pub(crate) async fn control_get(&self, path: &str) -> Value {
        self.http
            .get(self.url(&format!("/_emulator{path}")))
            .send()
            .await
            .expect("control call")
            .json()
            .await
            .expect("json")
    }

    /// Seeds a user; licensed users get a mailbox and drive.
    pub(crate) async fn user(&self, alias: &str, licensed: bool) -> String {
        let mut body =
            json!({"userPrincipalName": format!("{alias}@{DOMAIN}"), "usageLocation": "DE"});
        if licensed {
            body["license"] = json!("ENTERPRISEPACK");
        }
        self.control_post(&format!("/tenants/{TENANT}/users"), body)
            .await
            .assert_status(201)
            .json["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub(crate) async fn token_form(&self, form: &[(&str, &str)]) -> Answer {
        Answer::from(
            self.http
                .post(self.url(&format!("/{TENANT}/oauth2/v2.0/token")))
                .form(form)
                .send()
                .await
                .expect("token call"),
        )
        .await
    }

    /// An app-only Graph token.
    pub(crate) async fn app_token(&self) -> String {
        let answer = self
            .token_form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &self.client_id),
                ("client_secret", &self.client_secret),
                ("scope", GRAPH_DEFAULT),
            ])
            .await
            .assert_status(200);
        answer.json["access_token"].as_str().unwrap().to_string()
    }

    /// A delegated token set (access and refresh) for `upn` through the device code flow.
    pub(crate) async fn delegated(&self, upn: &str, scope: &str) -> Value {
        let code = Answer::from(
            self.http
                .post(self.url(&format!("/{TENANT}/oauth2/v2.0/devicecode")))
                .form(&[("client_id", self.client_id.as_str()), ("scope", scope)])
                .send()
                .await
                .unwrap(),
        )
        .await
        .assert_status(200)
        .json;
        self.control_post(
            &format!(
                "/devicecodes/{}/approve",
                code["user_code"].as_str().unwrap()
            ),
            json!({"user": upn}),
        )
        .await
        .assert_status(204);
        self.token_form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", &self.client_id),
            ("device_code", code["device_code"].as_str().unwrap()),
        ])
        .await
        .assert_status(200)
        .json
    }

    pub(crate) async fn graph(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.emulator.graph_url()))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        Answer::from(request.send().await.expect("graph call")).await
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> Answer {
        self.graph(reqwest::Method::GET, path, token, None).await
    }

    pub(crate) async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.graph(reqwest::Method::POST, path, token, Some(body))
            .await
    }
}

/// A response read whole.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) text: String,
    pub(crate) json: Value,
}

impl Answer {
    pub(crate) async fn from(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            text,
            json,
        }
    }

    #[track_caller]
    pub(crate) fn assert_status(self, status: u16) -> Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// The AADSTS code of an identity error.
    pub(crate) fn aadsts(&self) -> i64 {
        self.json["error_codes"][0].as_i64().unwrap_or(-1)
    }
}

/// How the receiver answers validation handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handshake {
    Correct,
    WrongBody,
    WrongContentType,
    Slow(Duration),
}

#[derive(Debug)]
struct ReceiverState {
    handshake: Handshake,
    fail_next: usize,
    validations: Vec<(String, String)>,
    posts: VecDeque<Value>,
}

/// A webhook endpoint on loopback.
#[derive(Clone)]
pub(crate) struct Receiver {
    state: Arc<Mutex<ReceiverState>>,
    pub(crate) addr: SocketAddr,
}

impl Receiver {
    pub(crate) async fn start(handshake: Handshake) -> Self {
        let state = Arc::new(Mutex::new(ReceiverState {
            handshake,
            fail_next: 0,
            validations: Vec::new(),
            posts: VecDeque::new(),
        }));
        let app = Router::new()
            .route("/hook", post(receive))
            .route("/lifecycle", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { state, addr }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub(crate) fn lifecycle_url(&self) -> String {
        format!("http://{}/lifecycle", self.addr)
    }

    pub(crate) fn fail_next(&self, count: usize) {
        self.state.lock().unwrap().fail_next = count;
    }

    /// (token, content type) of each validation request.
    pub(crate) fn validations(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().validations.clone()
    }

    /// Waits for the next posted notification body.
    pub(crate) async fn next(&self) -> Value {
        for _ in 0..200 {
            if let Some(body) = self.state.lock().unwrap().posts.pop_front() {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no notification arrived within 5 s");
    }

    pub(crate) fn pending(&self) -> usize {
        self.state.lock().unwrap().posts.len()
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(token) = query.get("validationToken") {
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let handshake = {
            let mut s = state.lock().unwrap();
            s.validations.push((token.clone(), content_type));
            s.handshake
        };
        return match handshake {
            Handshake::Correct => ([("content-type", "text/plain")], token.clone()).into_response(),
            Handshake::WrongBody => {
                ([("content-type", "text/plain")], "not the token").into_response()
            }
            Handshake::WrongContentType => {
                ([("content-type", "application/json")], token.clone()).into_response()
            }
            Handshake::Slow(delay) => {
                tokio::time::sleep(delay).await;
                ([("content-type", "text/plain")], token.clone()).into_response()
            }
        };
    }
    let mut s = state.lock().unwrap();
    if s.fail_next > 0 {
        s.fail_next -= 1;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    s.posts
        .push_back(serde_json::from_slice(&body).unwrap_or(Value::Null));
    StatusCode::ACCEPTED.into_response()
}

/// A sample from Microsoft's documentation (tests/samples), with `//` comments stripped.
pub(crate) fn sample(name: &str) -> Value {
    let path = format!("{}/tests/samples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let stripped: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') || line.trim_start().starts_with("//") => {
                &line[..at]
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    serde_json::from_str(&stripped).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every field of `sample`, recursively, is in `actual` with the same name (exact casing) and
/// JSON type; a null in the sample accepts null or a string. Returns the mismatches.
pub(crate) fn mismatches(sample: &Value, actual: &Value, path: &str) -> Vec<String> {
    let mut problems = Vec::new();
    match (sample, actual) {
        (Value::Object(expected), Value::Object(got)) => {
            for (key, value) in expected {
                match got.get(key) {
                    None => {
                        let near = got.keys().find(|k| k.eq_ignore_ascii_case(key));
                        problems.push(match near {
                            Some(near) => format!("{path}.{key}: casing differs ({near})"),
                            None => format!("{path}.{key}: missing"),
                        });
                    }
                    Some(found) => {
                        problems.extend(mismatches(value, found, &format!("{path}.{key}")))
                    }
                }
            }
        }
        (Value::Array(expected), Value::Array(got)) => {
            if let (Some(first), Some(got_first)) = (expected.first(), got.first()) {
                problems.extend(mismatches(first, got_first, &format!("{path}[0]")));
            } else if !expected.is_empty() {
                problems.push(format!("{path}: empty array, the sample has items"));
            }
        }
        (Value::Null, Value::Null | Value::String(_)) => {}
        (expected, got) if kind(expected) != kind(got) => {
            problems.push(format!(
                "{path}: {} expected, {} found",
                kind(expected),
                kind(got)
            ));
        }
        _ => {}
    }
    problems
}

#[track_caller]
pub(crate) fn assert_conforms(sample_name: &str, actual: &Value) {
    let problems = mismatches(&sample(sample_name), actual, "$");
    assert!(
        problems.is_empty(),
        "{sample_name}: {problems:#?}\nactual: {actual:#}"
    );
}
