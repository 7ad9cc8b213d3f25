//! Graph resources: users and licenses, mail, OneDrive, Teams, calendar, applications, paging
//! and `$batch`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{Answer, Env, DOMAIN, GRAPH_DEFAULT, TENANT};

fn new_user(alias: &str) -> Value {
    json!({
        "accountEnabled": true,
        "displayName": format!("Demo {alias}"),
        "mailNickname": alias,
        "userPrincipalName": format!("{alias}@{DOMAIN}"),
        "passwordProfile": {"forceChangePasswordNextSignIn": true, "password": "xWwvJ]6NMw+bWH-d"},
    })
}

#[tokio::test]
async fn users_are_created_with_required_fields_found_by_filter_and_paged() {
    let env = Env::standard().await;
    let token = env.app_token().await;
    for missing in [
        "accountEnabled",
        "displayName",
        "mailNickname",
        "userPrincipalName",
        "passwordProfile",
    ] {
        let mut body = new_user("incomplete");
        body.as_object_mut().unwrap().remove(missing);
        let answer = env.post("/users", &token, body).await.assert_status(400);
        assert_eq!(answer.json["error"]["code"], "Request_BadRequest");
        assert!(
            answer.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains(missing),
            "{missing}: {}",
            answer.text
        );
        assert!(answer.json["error"]["innerError"]["request-id"].is_string());
    }
    let mut foreign = new_user("x");
    foreign["userPrincipalName"] = json!("x@fabrikam.com");
    env.post("/users", &token, foreign).await.assert_status(400);
    for n in 0..5 {
        let created = env
            .post("/users", &token, new_user(&format!("demo{n}")))
            .await
            .assert_status(201);
        assert!(created.json["id"].is_string());
        assert!(
            created.json.get("passwordProfile").is_none(),
            "passwords are never returned"
        );
    }
    let duplicate = env
        .post("/users", &token, new_user("demo0"))
        .await
        .assert_status(400);
    assert!(duplicate.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already exists"));

    let found = env.get(&format!("/users?$filter=userPrincipalName eq 'DEMO3@{DOMAIN}'&$select=id,userPrincipalName,usageLocation"), &token).await.assert_status(200);
    let value = found.json["value"].as_array().unwrap();
    assert_eq!(value.len(), 1);
    assert_eq!(value[0]["userPrincipalName"], format!("demo3@{DOMAIN}"));
    assert!(
        value[0].get("displayName").is_none(),
        "$select keeps only what it names"
    );
    assert!(value[0].as_object().unwrap().contains_key("usageLocation"));
    env.get("/users?$filter=jobTitle eq 'x'", &token)
        .await
        .assert_status(400);

    let mut seen = Vec::new();
    let mut next = Some(format!("{}/users?$top=2", env.emulator.graph_url()));
    while let Some(url) = next {
        let page = Answer::from(env.http.get(&url).bearer_auth(&token).send().await.unwrap())
            .await
            .assert_status(200);
        let items = page.json["value"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|u| u["id"].as_str().unwrap().to_string()));
        next = page.json["@odata.nextLink"].as_str().map(str::to_string);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5, "paging visits every user once");
    env.get("/users?$top=0", &token).await.assert_status(400);

    let id = value[0]["id"].as_str().unwrap();
    env.graph(Method::DELETE, &format!("/users/{id}"), &token, None)
        .await
        .assert_status(204);
    let gone = env
        .get(&format!("/users/{id}"), &token)
        .await
        .assert_status(404);
    assert_eq!(gone.json["error"]["code"], "Request_ResourceNotFound");
}

#[tokio::test]
async fn permissions_are_enforced_and_tokens_verified() {
    let env = Env::with(&["User.Read.All"], &[]).await;
    let token = env.app_token().await;
    env.get("/users", &token).await.assert_status(200);
    let denied = env
        .post("/users", &token, new_user("x"))
        .await
        .assert_status(403);
    assert_eq!(denied.json["error"]["code"], "Authorization_RequestDenied");
    let missing = Answer::from(
        env.http
            .get(format!("{}/users", env.emulator.graph_url()))
            .send()
            .await
            .unwrap(),
    )
    .await
    .assert_status(401);
    assert_eq!(missing.json["error"]["code"], "InvalidAuthenticationToken");
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    env.get("/users", &forged).await.assert_status(401);
    env.get("/me", &token).await.assert_status(400);
}

#[tokio::test]
async fn licenses_need_a_usage_location_and_seats_and_bring_a_mailbox_after_the_delay() {
    let env = Env::standard().await;
    let token = env.app_token().await;
    let skus = env
        .get("/subscribedSkus", &token)
        .await
        .assert_status(200)
        .json;
    let sku = &skus["value"][0];
    assert_eq!(sku["skuPartNumber"], "ENTERPRISEPACK");
    assert_eq!(sku["prepaidUnits"]["enabled"], 25);
    let sku_id = sku["skuId"].as_str().unwrap().to_string();
    let mut settings = env.control_get("/settings").await;
    settings["provisioningDelaySeconds"] = json!(1);
    env.control_put("/settings", settings)
        .await
        .assert_status(204);

    let user = env
        .post("/users", &token, new_user("lic"))
        .await
        .assert_status(201)
        .json;
    let id = user["id"].as_str().unwrap();
    let assign =
        json!({"addLicenses": [{"disabledPlans": [], "skuId": sku_id}], "removeLicenses": []});
    let refused = env
        .post(
            &format!("/users/{id}/assignLicense"),
            &token,
            assign.clone(),
        )
        .await
        .assert_status(400);
    assert_eq!(
        refused.json["error"]["message"],
        "License assignment cannot be done for user with invalid usage location."
    );
    env.post(
        &format!("/users/{id}/assignLicense"),
        &token,
        json!({"addLicenses": []}),
    )
    .await
    .assert_status(400);
    env.graph(
        Method::PATCH,
        &format!("/users/{id}"),
        &token,
        Some(json!({"usageLocation": "DE"})),
    )
    .await
    .assert_status(204);
    let assigned = env
        .post(&format!("/users/{id}/assignLicense"), &token, assign)
        .await
        .assert_status(200);
    assert_eq!(assigned.json["id"], id);
    let consumed =
        env.get("/subscribedSkus", &token).await.json["value"][0]["consumedUnits"].clone();
    assert_eq!(consumed, 1);

    let early = env
        .get(&format!("/users/{id}/messages"), &token)
        .await
        .assert_status(404);
    assert_eq!(early.json["error"]["code"], "MailboxNotEnabledForRESTAPI");
    let early_drive = env
        .get(&format!("/users/{id}/drive"), &token)
        .await
        .assert_status(404);
    assert_eq!(early_drive.json["error"]["code"], "ResourceNotFound");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    env.get(&format!("/users/{id}/messages"), &token)
        .await
        .assert_status(200);
    env.get(&format!("/users/{id}/drive"), &token)
        .await
        .assert_status(200);
}

#[tokio::test]
async fn seats_run_out_with_a_clear_error() {
    let env = Env::standard().await;
    let token = env.app_token().await;
    let sku_id = env.get("/subscribedSkus", &token).await.json["value"][0]["skuId"]
        .as_str()
        .unwrap()
        .to_string();
    let assign =
        json!({"addLicenses": [{"disabledPlans": [], "skuId": sku_id}], "removeLicenses": []});
    for n in 0..25 {
        let mut body = new_user(&format!("seat{n}"));
        body["usageLocation"] = json!("US");
        let id = env
            .post("/users", &token, body)
            .await
            .assert_status(201)
            .json["id"]
            .as_str()
            .unwrap()
            .to_string();
        env.post(
            &format!("/users/{id}/assignLicense"),
            &token,
            assign.clone(),
        )
        .await
        .assert_status(200);
    }
    let mut body = new_user("seat25");
    body["usageLocation"] = json!("US");
    let id = env.post("/users", &token, body).await.json["id"]
        .as_str()
        .unwrap()
        .to_string();
    let full = env
        .post(&format!("/users/{id}/assignLicense"), &token, assign)
        .await
        .assert_status(400);
    assert!(full.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not have any available licenses"));
}

#[tokio::test]
async fn created_mail_is_a_draft_unless_message_flags_say_otherwise() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    let path = format!("/users/{adele}/mailFolders('Inbox')/messages");
    let draft = env
        .post(
            &path,
            &token,
            json!({"subject": "draft", "body": {"contentType": "text", "content": "hi"}}),
        )
        .await
        .assert_status(201);
    assert_eq!(draft.json["isDraft"], true);
    let received = env
        .post(
            &path,
            &token,
            json!({
                "subject": "looks received",
                "body": {"contentType": "text", "content": "hello"},
                "from": {"emailAddress": {"name": "Alex", "address": format!("alex@{DOMAIN}")}},
                "toRecipients": [{"emailAddress": {"address": format!("adele@{DOMAIN}")}}],
                "singleValueExtendedProperties": [{"id": "Integer 0x0E07", "value": "1"}],
            }),
        )
        .await
        .assert_status(201);
    assert_eq!(received.json["isDraft"], false);
    assert_eq!(received.json["isRead"], true);
    assert_eq!(
        received.json["from"]["emailAddress"]["address"],
        format!("alex@{DOMAIN}")
    );
    assert_eq!(received.json["sender"], received.json["from"]);
    // Filters Graph documents: a custom extended property, internetMessageId; others refused.
    let marked = env
        .post(
            &path,
            &token,
            json!({
                "subject": "marked",
                "singleValueExtendedProperties": [{"id": "String {6d1b3f0a-2c4e-4f7a-9b8d-5e0c1a2b3c4d} Name Step", "value": "run-1:mail:0"}],
            }),
        )
        .await
        .assert_status(201);
    assert!(
        marked.json.get("singleValueExtendedProperties").is_none(),
        "returned only on $expand"
    );
    let by_property = |value: &str| {
        format!("/users/{adele}/messages?$filter=singleValueExtendedProperties/Any(ep: ep/id eq 'String {{6d1b3f0a-2c4e-4f7a-9b8d-5e0c1a2b3c4d}} Name Step' and ep/value eq '{value}')")
    };
    let found = env
        .get(&by_property("run-1:mail:0"), &token)
        .await
        .assert_status(200);
    assert_eq!(found.json["value"].as_array().unwrap().len(), 1);
    assert_eq!(found.json["value"][0]["id"], marked.json["id"]);
    let none = env
        .get(&by_property("run-1:mail:9"), &token)
        .await
        .assert_status(200);
    assert!(none.json["value"].as_array().unwrap().is_empty());
    let by_id = env
        .get(
            &format!(
                "/users/{adele}/messages?$filter=internetMessageId eq '{}'",
                received.json["internetMessageId"].as_str().unwrap()
            ),
            &token,
        )
        .await
        .assert_status(200);
    assert_eq!(by_id.json["value"][0]["id"], received.json["id"]);
    env.get(
        &format!("/users/{adele}/messages?$filter=subject eq 'x'"),
        &token,
    )
    .await
    .assert_status(400);
    env.graph(
        Method::DELETE,
        &format!(
            "/users/{adele}/messages/{}",
            marked.json["id"].as_str().unwrap()
        ),
        &token,
        None,
    )
    .await
    .assert_status(204);
    let id = received.json["id"].as_str().unwrap();
    let inbox = env
        .get(
            &format!("/users/adele@{DOMAIN}/mailFolders/inbox/messages?$select=subject"),
            &token,
        )
        .await
        .assert_status(200);
    assert_eq!(inbox.json["value"].as_array().unwrap().len(), 2);
    let fetched = env
        .get(&format!("/users/{adele}/messages/{id}"), &token)
        .await
        .assert_status(200);
    assert_eq!(fetched.json["subject"], "looks received");
    let sent_edit = env
        .graph(
            Method::PATCH,
            &format!("/users/{adele}/messages/{id}"),
            &token,
            Some(json!({"subject": "changed"})),
        )
        .await;
    assert_eq!(sent_edit.status, 400, "a non-draft's subject is read-only");
    env.graph(
        Method::DELETE,
        &format!("/users/{adele}/messages/{id}"),
        &token,
        None,
    )
    .await
    .assert_status(204);
    env.get(&format!("/users/{adele}/messages/{id}"), &token)
        .await
        .assert_status(404);
}

#[tokio::test]
async fn send_mail_delivers_to_the_recipients_inbox_with_from_and_sender() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let alex = env.user("alex", true).await;
    let tokens = env
        .delegated(&format!("adele@{DOMAIN}"), "Mail.Send Mail.ReadWrite")
        .await;
    let delegated = tokens["access_token"].as_str().unwrap();
    env.post("/me/sendMail", delegated, json!({"message": {"subject": "Lunch?", "body": {"contentType": "text", "content": "At noon"}}})).await.assert_status(400);
    let sent = env
        .post("/me/sendMail", delegated, json!({"message": {"subject": "Lunch?", "body": {"contentType": "text", "content": "At noon"}, "toRecipients": [{"emailAddress": {"address": format!("alex@{DOMAIN}")}}]}}))
        .await
        .assert_status(202);
    assert!(sent.text.is_empty());
    let app = env.app_token().await;
    let inbox = env
        .get(&format!("/users/{alex}/mailFolders/inbox/messages"), &app)
        .await
        .assert_status(200);
    let message = &inbox.json["value"][0];
    assert_eq!(message["subject"], "Lunch?");
    assert_eq!(message["isDraft"], false);
    assert_eq!(message["isRead"], false);
    assert_eq!(
        message["from"]["emailAddress"]["address"],
        format!("adele@{DOMAIN}")
    );
    assert_eq!(
        message["sender"]["emailAddress"]["address"],
        format!("adele@{DOMAIN}")
    );
    let sent_items = env
        .get(
            &format!("/users/{adele}/mailFolders/sentitems/messages"),
            &app,
        )
        .await
        .assert_status(200);
    assert_eq!(sent_items.json["value"].as_array().unwrap().len(), 1);
    // A delegated caller cannot read someone else's mailbox.
    env.get(&format!("/users/{alex}/messages"), delegated)
        .await
        .assert_status(403);
}

#[tokio::test]
async fn a_sent_draft_and_its_reply_share_the_conversation_and_name_the_original() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let alex = env.user("alex", true).await;
    let adele_token = env
        .delegated(&format!("adele@{DOMAIN}"), "Mail.Send Mail.ReadWrite")
        .await;
    let adele_token = adele_token["access_token"].as_str().unwrap().to_string();
    let draft = env
        .post(
            "/me/messages",
            &adele_token,
            json!({"subject": "Offer", "body": {"contentType": "text", "content": "Attached."},
            "toRecipients": [{"emailAddress": {"address": format!("alex@{DOMAIN}")}}]}),
        )
        .await
        .assert_status(201);
    assert_eq!(draft.json["isDraft"], true);
    let (id, internet_id, conversation) = (
        draft.json["id"].as_str().unwrap().to_string(),
        draft.json["internetMessageId"]
            .as_str()
            .unwrap()
            .to_string(),
        draft.json["conversationId"].as_str().unwrap().to_string(),
    );
    let sent = env
        .post(&format!("/me/messages/{id}/send"), &adele_token, json!({}))
        .await
        .assert_status(202);
    assert!(sent.text.is_empty());
    env.post(&format!("/me/messages/{id}/send"), &adele_token, json!({}))
        .await
        .assert_status(404);
    let app = env.app_token().await;
    let inbox = env
        .get(&format!("/users/{alex}/mailFolders/inbox/messages"), &app)
        .await
        .assert_status(200);
    let received = &inbox.json["value"][0];
    assert_eq!(received["internetMessageId"], internet_id.as_str());
    assert_eq!(received["conversationId"], conversation.as_str());
    assert_eq!(received["isDraft"], false);
    let sent_copy = env
        .get(
            &format!("/users/{adele}/mailFolders/sentitems/messages"),
            &app,
        )
        .await
        .assert_status(200);
    assert_eq!(
        sent_copy.json["value"][0]["internetMessageId"],
        internet_id.as_str()
    );
    // Alex replies: Adele receives it in the same conversation, In-Reply-To the original.
    let alex_token = env
        .delegated(&format!("alex@{DOMAIN}"), "Mail.Send Mail.ReadWrite")
        .await;
    let alex_token = alex_token["access_token"].as_str().unwrap();
    let received_id = received["id"].as_str().unwrap();
    env.post(
        &format!("/me/messages/{received_id}/reply"),
        alex_token,
        json!({"comment": "Thanks, accepted."}),
    )
    .await
    .assert_status(202);
    let adele_inbox = env
        .get(
            &format!("/users/{adele}/mailFolders/inbox/messages?$select=subject,conversationId,internetMessageHeaders"),
            &app,
        )
        .await
        .assert_status(200);
    let answer = &adele_inbox.json["value"][0];
    assert_eq!(answer["subject"], "RE: Offer");
    assert_eq!(answer["conversationId"], conversation.as_str());
    let in_reply_to = answer["internetMessageHeaders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "In-Reply-To")
        .unwrap();
    assert_eq!(in_reply_to["value"], internet_id.as_str());
}

#[tokio::test]
async fn an_application_access_policy_limits_app_only_mailbox_access() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let alex = env.user("alex", true).await;
    let app = env.app_token().await;
    {
        let mut world = env.emulator.shared().world();
        let tenant = world.tenants.values_mut().next().unwrap();
        let client_id = tenant.grants.keys().next().unwrap().clone();
        tenant
            .mailbox_scopes
            .insert(client_id, [adele.clone()].into_iter().collect());
    }
    env.get(&format!("/users/{adele}/messages"), &app)
        .await
        .assert_status(200);
    let denied = env
        .get(&format!("/users/{alex}/messages"), &app)
        .await
        .assert_status(403);
    assert_eq!(denied.json["error"]["code"], "ErrorAccessDenied");
    assert_eq!(
        denied.json["error"]["message"],
        "Access to OData is disabled."
    );
    env.get(&format!("/users/{alex}/events"), &app)
        .await
        .assert_status(403);
}

#[tokio::test]
async fn onedrive_simple_and_session_uploads_with_attribution() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    let put = Answer::from(
        env.http
            .put(format!(
                "{}/users/{adele}/drive/root:/Reports/Q3 plan.txt:/content",
                env.emulator.graph_url()
            ))
            .bearer_auth(&token)
            .body("quarterly plan")
            .send()
            .await
            .unwrap(),
    )
    .await
    .assert_status(201);
    assert_eq!(put.json["name"], "Q3 plan.txt");
    assert_eq!(put.json["size"], 14);
    assert_eq!(
        put.json["createdBy"]["application"]["id"],
        env.client_id.as_str()
    );
    assert!(
        put.json["createdBy"].get("user").is_none(),
        "app-only uploads are attributed to the app"
    );
    assert_eq!(put.json["parentReference"]["path"], "/drive/root:/Reports");
    let by_path = env
        .get(
            &format!("/users/{adele}/drive/root:/Reports/Q3 plan.txt"),
            &token,
        )
        .await
        .assert_status(200);
    assert_eq!(by_path.json["id"], put.json["id"]);

    // Over 250 MB: refused from the Content-Length alone.
    let addr = env.emulator.addr();
    // An async socket: the test runtime has one thread, shared with the emulator.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("PUT /v1.0/users/{adele}/drive/root:/big.bin:/content HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n", 250u64 * 1024 * 1024 + 1);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");

    let session = env
        .post(
            &format!("/users/{adele}/drive/root:/big/video.bin:/createUploadSession"),
            &token,
            json!({"item": {"@microsoft.graph.conflictBehavior": "fail"}}),
        )
        .await
        .assert_status(200);
    let upload_url = session.json["uploadUrl"].as_str().unwrap().to_string();
    assert_eq!(session.json["nextExpectedRanges"], json!(["0-"]));
    let total = 327_680 * 2 + 100;
    let data = vec![7u8; total];
    let put_range = |start: usize, end: usize, auth: bool| {
        let mut request = env
            .http
            .put(&upload_url)
            .header(
                "Content-Range",
                format!("bytes {start}-{}/{total}", end - 1),
            )
            .body(data[start..end].to_vec());
        if auth {
            request = request.bearer_auth(&token);
        }
        request.send()
    };
    assert_eq!(
        put_range(0, 327_680, true).await.unwrap().status(),
        401,
        "no Authorization on the upload URL"
    );
    assert_eq!(
        put_range(0, 1000, false).await.unwrap().status(),
        400,
        "fragments are multiples of 320 KiB"
    );
    let first = Answer::from(put_range(0, 327_680, false).await.unwrap())
        .await
        .assert_status(202);
    assert_eq!(first.json["nextExpectedRanges"], json!(["327680-"]));
    assert_eq!(
        put_range(0, 327_680, false).await.unwrap().status(),
        416,
        "a range already received"
    );
    let status = Answer::from(env.http.get(&upload_url).send().await.unwrap())
        .await
        .assert_status(200);
    assert_eq!(
        status.json["nextExpectedRanges"],
        json!(["327680-"]),
        "the session's status says where to go on"
    );
    Answer::from(put_range(327_680, 655_360, false).await.unwrap())
        .await
        .assert_status(202);
    let done = Answer::from(put_range(655_360, total, false).await.unwrap())
        .await
        .assert_status(201);
    assert_eq!(done.json["size"], total);
    assert_eq!(done.json["name"], "video.bin");
    let again = env
        .post(
            &format!("/users/{adele}/drive/root:/big/video.bin:/createUploadSession"),
            &token,
            json!({"item": {"@microsoft.graph.conflictBehavior": "fail"}}),
        )
        .await;
    assert_eq!(again.status, 409);
    assert_eq!(again.json["error"]["code"], "nameAlreadyExists");
}

#[tokio::test]
async fn chat_messages_need_delegated_access_unless_importing() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let alex = env.user("alex", true).await;
    let app = env.app_token().await;
    let members = json!([
        {"@odata.type": "#microsoft.graph.aadUserConversationMember", "roles": ["owner"], "user@odata.bind": format!("https://graph.microsoft.com/v1.0/users('{adele}')")},
        {"@odata.type": "#microsoft.graph.aadUserConversationMember", "roles": ["owner"], "user@odata.bind": format!("https://graph.microsoft.com/v1.0/users('alex@{DOMAIN}')")},
    ]);
    let chat = env
        .post(
            "/chats",
            &app,
            json!({"chatType": "oneOnOne", "members": members}),
        )
        .await
        .assert_status(201);
    let chat_id = chat.json["id"].as_str().unwrap().to_string();
    assert!(chat_id.starts_with("19:") && chat_id.ends_with("@unq.gbl.spaces"));
    let again = env
        .post(
            "/chats",
            &app,
            json!({"chatType": "oneOnOne", "members": members}),
        )
        .await
        .assert_status(201);
    assert_eq!(
        again.json["id"],
        chat_id.as_str(),
        "an existing one-on-one chat is returned"
    );

    let refused = env
        .post(
            &format!("/chats/{chat_id}/messages"),
            &app,
            json!({"body": {"content": "hello"}}),
        )
        .await
        .assert_status(401);
    assert!(refused.json["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with(
            "Message POST is allowed in application-only context only for import purposes"
        ));

    let tokens = env
        .delegated(&format!("alex@{DOMAIN}"), "ChatMessage.Send")
        .await;
    let posted = env
        .post(
            &format!("/chats/{chat_id}/messages"),
            tokens["access_token"].as_str().unwrap(),
            json!({"body": {"content": "Hello Adele"}}),
        )
        .await
        .assert_status(201);
    assert_eq!(posted.json["from"]["user"]["id"], alex.as_str());
    assert_eq!(posted.json["body"]["content"], "Hello Adele");
    assert_eq!(posted.json["chatId"], chat_id.as_str());
    let listed = env
        .get(&format!("/chats/{chat_id}/messages"), &app)
        .await
        .assert_status(200);
    assert_eq!(listed.json["value"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn calendar_events_are_created_updated_cancelled_and_deleted() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let alex = env.user("alex", true).await;
    let token = env.app_token().await;
    let event = json!({
        "subject": "Planning",
        "start": {"dateTime": "2026-12-01T10:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-12-01T11:00:00", "timeZone": "UTC"},
        "attendees": [{"emailAddress": {"address": format!("alex@{DOMAIN}")}, "type": "required"}],
    });
    env.post(
        &format!("/users/{adele}/events"),
        &token,
        json!({"subject": "no times"}),
    )
    .await
    .assert_status(400);
    let created = env
        .post(&format!("/users/{adele}/calendar/events"), &token, event)
        .await
        .assert_status(201);
    let id = created.json["id"].as_str().unwrap().to_string();
    assert_eq!(
        created.json["organizer"]["emailAddress"]["address"],
        format!("adele@{DOMAIN}")
    );
    assert!(
        created.json.get("transactionId").is_none(),
        "returned only when set"
    );
    // A create retried with its transactionId returns the first event instead of a second.
    let keyed = json!({
        "subject": "Retry-safe",
        "start": {"dateTime": "2026-12-02T10:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-12-02T11:00:00", "timeZone": "UTC"},
        "transactionId": "crm-77",
    });
    let first = env
        .post(&format!("/users/{adele}/events"), &token, keyed.clone())
        .await
        .assert_status(201);
    let again = env
        .post(&format!("/users/{adele}/events"), &token, keyed)
        .await
        .assert_status(201);
    assert_eq!(first.json["id"], again.json["id"]);
    assert_eq!(first.json["transactionId"], "crm-77");
    let listed = env
        .get(&format!("/users/{adele}/events"), &token)
        .await
        .assert_status(200)
        .json;
    assert_eq!(
        listed["value"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["subject"] == "Retry-safe")
            .count(),
        1
    );
    let updated = env
        .graph(
            Method::PATCH,
            &format!("/users/{adele}/events/{id}"),
            &token,
            Some(json!({"subject": "Planning (moved)"})),
        )
        .await
        .assert_status(200);
    assert_eq!(updated.json["subject"], "Planning (moved)");
    let copies = env
        .get(&format!("/users/{alex}/events"), &token)
        .await
        .assert_status(200)
        .json;
    assert_eq!(copies["value"][0]["subject"], "Planning (moved)");
    let copy_id = copies["value"][0]["id"].as_str().unwrap().to_string();
    env.post(
        &format!("/users/{alex}/events/{copy_id}/cancel"),
        &token,
        json!({"comment": "x"}),
    )
    .await
    .assert_status(400);
    env.post(
        &format!("/users/{adele}/events/{id}/cancel"),
        &token,
        json!({"comment": "Sorry"}),
    )
    .await
    .assert_status(202);
    env.get(&format!("/users/{adele}/events/{id}"), &token)
        .await
        .assert_status(404);
    let cancelled = env
        .get(&format!("/users/{alex}/events/{copy_id}"), &token)
        .await
        .assert_status(200);
    assert_eq!(cancelled.json["isCancelled"], true);
    assert!(cancelled.json["subject"]
        .as_str()
        .unwrap()
        .starts_with("Canceled: "));
    env.graph(
        Method::DELETE,
        &format!("/users/{alex}/events/{copy_id}"),
        &token,
        None,
    )
    .await
    .assert_status(204);
    env.graph(
        Method::DELETE,
        &format!("/users/{alex}/events/{copy_id}"),
        &token,
        None,
    )
    .await
    .assert_status(404);
}

#[tokio::test]
async fn applications_get_secrets_once_and_the_secret_authenticates() {
    let env = Env::standard().await;
    let token = env.app_token().await;
    env.post("/applications", &token, json!({}))
        .await
        .assert_status(400);
    let app = env
        .post(
            "/applications",
            &token,
            json!({"displayName": "Heartbeat bot", "signInAudience": "AzureADMultipleOrgs"}),
        )
        .await
        .assert_status(201);
    let (id, app_id) = (
        app.json["id"].as_str().unwrap().to_string(),
        app.json["appId"].as_str().unwrap().to_string(),
    );
    let password = env
        .post(
            &format!("/applications/{id}/addPassword"),
            &token,
            json!({"passwordCredential": {"displayName": "tenantd"}}),
        )
        .await
        .assert_status(200);
    let secret = password.json["secretText"].as_str().unwrap().to_string();
    assert!(secret.len() >= 16);
    assert_eq!(password.json["hint"], &secret[..3]);
    let read = env
        .get(&format!("/applications(appId='{app_id}')"), &token)
        .await
        .assert_status(200);
    assert_eq!(
        read.json["passwordCredentials"][0]["secretText"],
        Value::Null,
        "the secret is shown once"
    );
    assert!(!read.text.contains(&secret));
    let minted = env
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &app_id),
            ("client_secret", &secret),
            ("scope", GRAPH_DEFAULT),
        ])
        .await;
    // The new app is registered but nobody consented in the tenant yet.
    assert_eq!(minted.aadsts(), 700016, "{}", minted.text);
    env.graph(Method::DELETE, &format!("/applications/{id}"), &token, None)
        .await
        .assert_status(204);
    env.get(&format!("/applications/{id}"), &token)
        .await
        .assert_status(404);
    let _ = TENANT;
}

/// application-upsert.md: `PATCH /applications(uniqueName='…')` with
/// `Prefer: create-if-missing` creates once (201 with the object), then updates (204); without
/// the header a missing name is a 404.
#[tokio::test]
async fn applications_upsert_by_unique_name_creates_once() {
    let env = Env::standard().await;
    let token = env.app_token().await;
    let path = "/applications(uniqueName='tenantd-bot-7')";
    let url = format!("{}/v1.0{path}", env.emulator.base_url());
    let upsert = |prefer: bool, name: &str| {
        let mut request = env
            .http
            .patch(&url)
            .bearer_auth(&token)
            .json(&json!({"displayName": name, "signInAudience": "AzureADMultipleOrgs"}));
        if prefer {
            request = request.header("Prefer", "create-if-missing");
        }
        request.send()
    };
    assert_eq!(upsert(false, "Bot").await.unwrap().status(), 404);
    let created = Answer::from(upsert(true, "Bot").await.unwrap())
        .await
        .assert_status(201);
    assert_eq!(created.json["uniqueName"], "tenantd-bot-7");
    assert_eq!(created.json["displayName"], "Bot");
    let again = upsert(true, "Bot renamed").await.unwrap();
    assert_eq!(again.status(), 204);
    let read = env.get(path, &token).await.assert_status(200);
    assert_eq!(read.json["id"], created.json["id"]);
    assert_eq!(read.json["appId"], created.json["appId"]);
    assert_eq!(read.json["displayName"], "Bot renamed");
    let listed = env.get("/applications", &token).await.assert_status(200);
    let named = listed.json["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|app| app["uniqueName"] == "tenantd-bot-7")
        .count();
    assert_eq!(named, 1, "one application, however often upserted");
}

#[tokio::test]
async fn batch_runs_up_to_20_requests_with_dependencies_and_per_item_status() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    let parallel = env
        .post("/$batch", &token, json!({"requests": [
            {"id": "1", "method": "GET", "url": "/users?$select=id"},
            {"id": "2", "method": "GET", "url": format!("/users/{adele}")},
            {"id": "3", "method": "GET", "url": "/users/nobody@contoso.onmicrosoft.com"},
            {"id": "4", "method": "POST", "url": format!("/users/{adele}/mailFolders/inbox/messages"), "headers": {"Content-Type": "application/json"}, "body": {"subject": "via batch"}},
        ]}))
        .await
        .assert_status(200);
    let mut statuses: Vec<(String, u64)> = parallel.json["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        vec![
            ("1".into(), 200),
            ("2".into(), 200),
            ("3".into(), 404),
            ("4".into(), 201)
        ]
    );

    let chained = env
        .post(
            "/$batch",
            &token,
            json!({"requests": [
                {"id": "a", "method": "GET", "url": "/users/nobody@contoso.onmicrosoft.com"},
                {"id": "b", "method": "GET", "url": "/users", "dependsOn": ["a"]},
            ]}),
        )
        .await
        .assert_status(200);
    assert_eq!(chained.json["responses"][1]["status"], 424);

    let too_many: Vec<Value> = (0..21)
        .map(|n| json!({"id": n.to_string(), "method": "GET", "url": "/users"}))
        .collect();
    env.post("/$batch", &token, json!({"requests": too_many}))
        .await
        .assert_status(400);
    env.post("/$batch", &token, json!({"requests": [{"id": "1", "method": "GET", "url": "/users"}, {"id": "1", "method": "GET", "url": "/users"}]})).await.assert_status(400);
    env.post(
        "/$batch",
        &token,
        json!({"requests": [{"id": "1", "method": "POST", "url": "/users", "body": {}}]}),
    )
    .await
    .assert_status(400);
}

#[tokio::test]
async fn access_tokens_expire_after_the_configured_lifetime() {
    let env = Env::standard().await;
    let mut settings = env.control_get("/settings").await;
    settings["accessTokenLifetimeSeconds"] = json!(1);
    env.control_put("/settings", settings)
        .await
        .assert_status(204);
    let answer = env
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &env.client_id),
            ("client_secret", &env.client_secret),
            ("scope", GRAPH_DEFAULT),
        ])
        .await
        .assert_status(200);
    assert_eq!(answer.json["expires_in"], 1);
    let token = answer.json["access_token"].as_str().unwrap();
    env.get("/users", token).await.assert_status(200);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let expired = env.get("/users", token).await.assert_status(401);
    assert_eq!(expired.json["error"]["code"], "InvalidAuthenticationToken");
    assert!(expired.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
}

/// Follows a delta query from `first` (a path under /v1.0, or an absolute link) to its delta
/// link; returns every item and the delta link.
async fn follow_delta(env: &Env, token: &str, first: &str) -> (Vec<Value>, String, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut next = if first.starts_with("http") {
        first.to_string()
    } else {
        format!("{}{first}", env.emulator.graph_url())
    };
    loop {
        pages += 1;
        let page: Value = env
            .http
            .get(&next)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        items.extend(page["value"].as_array().unwrap().iter().cloned());
        if let Some(done) = page["@odata.deltaLink"].as_str() {
            return (items, done.to_string(), pages);
        }
        next = page["@odata.nextLink"].as_str().unwrap().to_string();
    }
}

#[tokio::test]
async fn message_delta_pages_the_folder_then_returns_only_changes_and_removals() {
    let env = Env::standard().await;
    let adele = env.user("adele", true).await;
    let token = env.app_token().await;
    let inbox = format!("/users/{adele}/mailFolders('Inbox')/messages");
    let mut ids = Vec::new();
    for n in 0..12 {
        let created = env
            .post(&inbox, &token, json!({"subject": format!("m{n}")}))
            .await
            .assert_status(201);
        ids.push(created.json["id"].as_str().unwrap().to_string());
    }
    // Elsewhere: not part of the Inbox's delta.
    env.post(
        &format!("/users/{adele}/mailFolders('Archive')/messages"),
        &token,
        json!({"subject": "other"}),
    )
    .await
    .assert_status(201);
    let (items, link, pages) = follow_delta(
        &env,
        &token,
        &format!("/users/{adele}/mailFolders('Inbox')/messages/delta?$select=subject"),
    )
    .await;
    assert_eq!(items.len(), 12);
    assert_eq!(pages, 2, "ten a page");
    assert!(
        items
            .iter()
            .all(|m| m.get("body").is_none() && m["subject"].is_string()),
        "$select kept across pages"
    );
    // Changes since the link: one new, one deleted, one updated.
    env.post(&inbox, &token, json!({"subject": "new"}))
        .await
        .assert_status(201);
    env.graph(
        Method::DELETE,
        &format!("/users/{adele}/messages/{}", ids[0]),
        &token,
        None,
    )
    .await
    .assert_status(204);
    env.graph(
        Method::PATCH,
        &format!("/users/{adele}/messages/{}", ids[1]),
        &token,
        Some(json!({"isRead": true})),
    )
    .await
    .assert_status(200);
    let (changes, next_link, _) = follow_delta(&env, &token, &link).await;
    assert_eq!(changes.len(), 3);
    let removed: Vec<&Value> = changes
        .iter()
        .filter(|c| c.get("@removed").is_some())
        .collect();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["id"], ids[0].as_str());
    assert_eq!(removed[0]["@removed"]["reason"], "deleted");
    assert!(changes.iter().any(|c| c["id"] == ids[1].as_str()));
    // Nothing changed since: an empty page with a delta link.
    let (none, _, _) = follow_delta(&env, &token, &next_link).await;
    assert!(none.is_empty());
    // A token the emulator never handed out: 410 as for an expired one.
    env.get(
        &format!("/users/{adele}/mailFolders('Inbox')/messages/delta?$deltatoken=999999"),
        &token,
    )
    .await
    .assert_status(410);
}

/// The control API's address answers with its index (the demo's banner names that address),
/// and every listed route exists: none answers to its first method as an unknown path does
/// (400 "Resource not found for the segment", Graph's answer) or with 405; placeholders filled
/// with unknown ids may be refused (404 for that id), which still shows the route.
#[tokio::test]
async fn the_control_api_address_lists_its_routes_and_each_exists() {
    let env = Env::standard().await;
    let base = env.emulator.base_url();
    let index: serde_json::Value = env
        .http
        .get(format!("{base}/_emulator"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let routes = index["control"].as_array().expect("a list of routes");
    assert!(routes.len() >= 19, "{index}");
    for route in routes {
        let path = route["path"]
            .as_str()
            .unwrap()
            .replace("{tenant}", TENANT)
            .replace(['{', '}'], "");
        let method = route["methods"]
            .as_str()
            .unwrap()
            .split(", ")
            .next()
            .unwrap();
        if method == "DELETE" || path.ends_with("/demo") {
            continue; // destructive or seeding: their existence is tested where they are used
        }
        let answer = env
            .http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let body = answer.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}");
        assert!(
            !body.contains("Resource not found for the segment"),
            "{method} {path}: {status} {body}"
        );
    }
}
