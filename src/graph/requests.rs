//! Typed requests for the Graph endpoints tenantd uses. Feature code calls these, never
//! building URLs itself; each names its endpoint family (metrics) and mailbox (Outlook limits).

use reqwest::Method;
use serde_json::{json, Value};

use super::{GraphClient, GraphError, GraphRequest};
use crate::vault::connections::Connection;

/// Whose drive a request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriveOwner {
    /// A user's OneDrive, by user id or UPN.
    User(String),
    /// A drive by its id.
    Drive(String),
}

/// `value` as one path segment: everything but RFC 3986 unreserved characters
/// percent-encoded (form encoding would turn a space into a literal `+` in a path).
/// The path of a user: `/users/{id or UPN}`, or `/me` for the signed-in user of a delegated
/// connection (Graph's resource paths say `me`; `/users/me` is not a user).
fn user_root(user: &str) -> String {
    if user.eq_ignore_ascii_case("me") {
        "/me".to_string()
    } else {
        format!("/users/{}", segment(user))
    }
}

fn segment(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// `value` as an OData string literal: quoted, inner quotes doubled.
fn odata_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The first byte an upload session expects next (`nextExpectedRanges: ["26-"]`).
fn next_expected(answer: &Value) -> Option<usize> {
    answer["nextExpectedRanges"]
        .as_array()?
        .first()?
        .as_str()?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Files larger than this go through an upload session. Graph's simple upload takes up to
/// 250 MB, but a failed PUT starts over from the first byte, and Microsoft's SDKs switch at
/// 4 MiB; a session resumes at the next expected range.
pub const SIMPLE_UPLOAD_MAX: usize = 4 * 1024 * 1024;
/// One upload-session fragment: ten of Graph's 320 KiB units (fragments must be multiples of
/// 327,680 bytes except the last, and below 60 MiB).
pub const UPLOAD_FRAGMENT: usize = 10 * 320 * 1024;

impl GraphClient {
    /// `GET /users/{user}/messages/{id}` with the fields tenantd stores.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn get_message(
        &self,
        connection: &Connection,
        user: &str,
        message_id: &str,
        select: &str,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::GET,
                format!("{}/messages/{}", user_root(user), segment(message_id)),
                "mail",
            )
            .query("$select", select)
            .mailbox(user),
        )
        .await
    }

    /// `GET /users/{user}/events/{id}`.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn get_event(
        &self,
        connection: &Connection,
        user: &str,
        event_id: &str,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::GET,
                format!("{}/events/{}", user_root(user), segment(event_id)),
                "calendar",
            )
            .mailbox(user),
        )
        .await
    }

    /// The root item of a user's OneDrive (`GET /users/{user}/drive/root`) or of a drive
    /// (`GET /drives/{id}/root`): what a drive subscription's notification points at.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn get_drive_root(
        &self,
        connection: &Connection,
        owner: &DriveOwner,
    ) -> Result<Value, GraphError> {
        let path = match owner {
            DriveOwner::User(user) => format!("{}/drive/root", user_root(user)),
            DriveOwner::Drive(drive) => format!("/drives/{}/root", segment(drive)),
        };
        self.send(connection, &GraphRequest::new(Method::GET, path, "drive"))
            .await
    }

    /// `PATCH /users/{id}` with `changes`.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn update_user(
        &self,
        connection: &Connection,
        user: &str,
        changes: &Value,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::new(Method::PATCH, user_root(user), "users").json(changes.clone()),
        )
        .await
    }

    /// `DELETE /users/{id}` (to the directory's recycle bin for 30 days).
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn delete_user(&self, connection: &Connection, user: &str) -> Result<(), GraphError> {
        self.send(
            connection,
            &GraphRequest::new(Method::DELETE, user_root(user), "users"),
        )
        .await
        .map(drop)
    }

    /// `POST /users/{id}/assignLicense` removing one SKU.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn remove_license(
        &self,
        connection: &Connection,
        user: &str,
        sku_id: &str,
    ) -> Result<(), GraphError> {
        let body = json!({"addLicenses": [], "removeLicenses": [sku_id]});
        self.send(
            connection,
            &GraphRequest::new(
                Method::POST,
                format!("{}/assignLicense", user_root(user)),
                "licenses",
            )
            .json(body),
        )
        .await
        .map(drop)
    }

    /// `POST /users/{id}/mailFolders/{folder}/messages`: a message created in a folder
    /// (a draft unless its `singleValueExtendedProperties` set PR_MESSAGE_FLAGS).
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn create_message(
        &self,
        connection: &Connection,
        user: &str,
        folder: &str,
        message: &Value,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::POST,
                format!(
                    "{}/mailFolders/{}/messages",
                    user_root(user),
                    segment(folder)
                ),
                "mail",
            )
            .json(message.clone())
            .mailbox(user),
        )
        .await
    }

    /// `POST /users/{id}/messages`: a draft in the mailbox (Graph gives it its id,
    /// internetMessageId and conversationId before it is sent).
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn create_draft(
        &self,
        connection: &Connection,
        user: &str,
        message: &Value,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::POST,
                format!("{}/messages", user_root(user)),
                "mail",
            )
            .json(message.clone())
            .mailbox(user),
        )
        .await
    }

    /// `POST /users/{id}/messages/{id}/send`: sends a draft.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn send_draft(
        &self,
        connection: &Connection,
        user: &str,
        message_id: &str,
    ) -> Result<(), GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::POST,
                format!("{}/messages/{}/send", user_root(user), segment(message_id)),
                "mail",
            )
            .mailbox(user),
        )
        .await
        .map(drop)
    }

    /// The messages of a user's mailbox with `internet_message_id` (a sent message's copies
    /// share it): `GET /users/{id}/messages?$filter=internetMessageId eq '...'`.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn messages_by_internet_id(
        &self,
        connection: &Connection,
        user: &str,
        internet_message_id: &str,
    ) -> Result<Vec<Value>, GraphError> {
        let filter = format!("internetMessageId eq {}", odata_string(internet_message_id));
        self.filtered_messages(connection, user, filter).await
    }

    /// The first message of a user's mailbox carrying single-value extended property
    /// `property` (e.g. `String {guid} Name X`) with `value`:
    /// `$filter=singleValueExtendedProperties/Any(ep: ep/id eq '...' and ep/value eq '...')`.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn message_by_property(
        &self,
        connection: &Connection,
        user: &str,
        property: &str,
        value: &str,
    ) -> Result<Option<Value>, GraphError> {
        let filter = format!(
            "singleValueExtendedProperties/Any(ep: ep/id eq {} and ep/value eq {})",
            odata_string(property),
            odata_string(value)
        );
        let found = self.filtered_messages(connection, user, filter).await?;
        Ok(found.into_iter().next())
    }

    /// The first page of a user's messages matching `filter`, with the fields that identify
    /// and attribute them.
    async fn filtered_messages(
        &self,
        connection: &Connection,
        user: &str,
        filter: String,
    ) -> Result<Vec<Value>, GraphError> {
        let page = self
            .send(
                connection,
                &GraphRequest::new(Method::GET, format!("{}/messages", user_root(user)), "mail")
                    .query("$filter", filter)
                    .query(
                        "$select",
                        "id,from,sender,isDraft,parentFolderId,internetMessageId",
                    )
                    .mailbox(user),
            )
            .await?;
        Ok(page["value"].as_array().cloned().unwrap_or_default())
    }

    /// `POST /chats` for a one-on-one chat between two users (ids or UPNs; Graph returns the
    /// existing chat when there is one). Returns the chat.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn one_on_one_chat(
        &self,
        connection: &Connection,
        me: &str,
        other: &str,
    ) -> Result<Value, GraphError> {
        // The bind names the user on this cloud's Graph (the host tokens are issued for).
        let graph = self.graph_resource();
        let member = |user: &str| {
            json!({
                "@odata.type": "#microsoft.graph.aadUserConversationMember",
                "roles": ["owner"],
                "user@odata.bind": format!("{graph}/v1.0/users('{}')", user.replace('\'', "''")),
            })
        };
        self.send(
            connection,
            &GraphRequest::new(Method::POST, "/chats", "teams").json(json!({
                "chatType": "oneOnOne",
                "members": [member(me), member(other)],
            })),
        )
        .await
    }

    /// `POST /chats/{id}/messages` (delegated `ChatMessage.Send`). Returns the chatMessage.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn post_chat_message(
        &self,
        connection: &Connection,
        chat_id: &str,
        text: &str,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::POST,
                format!("/chats/{}/messages", segment(chat_id)),
                "teams",
            )
            .json(json!({"body": {"contentType": "text", "content": text}})),
        )
        .await
    }

    /// `POST /users/{id}/chats/{id}/messages/{id}/softDelete`: Graph cannot hard-delete chat
    /// messages; a soft-deleted one shows as deleted.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn soft_delete_chat_message(
        &self,
        connection: &Connection,
        user: &str,
        chat_id: &str,
        message_id: &str,
    ) -> Result<(), GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::POST,
                format!(
                    "{}/chats/{}/messages/{}/softDelete",
                    user_root(user),
                    segment(chat_id),
                    segment(message_id)
                ),
                "teams",
            ),
        )
        .await
        .map(drop)
    }

    /// `DELETE /users/{id}/messages/{id}`.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn delete_message(
        &self,
        connection: &Connection,
        user: &str,
        message_id: &str,
    ) -> Result<(), GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::DELETE,
                format!("{}/messages/{}", user_root(user), segment(message_id)),
                "mail",
            )
            .mailbox(user),
        )
        .await
        .map(drop)
    }

    /// `POST /users/{id}/events`.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn create_event(
        &self,
        connection: &Connection,
        user: &str,
        event: &Value,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::POST,
                format!("{}/events", user_root(user)),
                "calendar",
            )
            .json(event.clone())
            .mailbox(user),
        )
        .await
    }

    /// `PATCH /users/{id}/events/{id}` with `changes`.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn update_event(
        &self,
        connection: &Connection,
        user: &str,
        event_id: &str,
        changes: &Value,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::PATCH,
                format!("{}/events/{}", user_root(user), segment(event_id)),
                "calendar",
            )
            .json(changes.clone())
            .mailbox(user),
        )
        .await
    }

    /// `POST /users/{id}/events/{id}/cancel`: the organizer cancels, attendees are told.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn cancel_event(
        &self,
        connection: &Connection,
        user: &str,
        event_id: &str,
        comment: &str,
    ) -> Result<(), GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::POST,
                format!("{}/events/{}/cancel", user_root(user), segment(event_id)),
                "calendar",
            )
            .json(json!({ "comment": comment }))
            .mailbox(user),
        )
        .await
        .map(drop)
    }

    /// `DELETE /users/{id}/events/{id}`.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn delete_event(
        &self,
        connection: &Connection,
        user: &str,
        event_id: &str,
    ) -> Result<(), GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::DELETE,
                format!("{}/events/{}", user_root(user), segment(event_id)),
                "calendar",
            )
            .mailbox(user),
        )
        .await
        .map(drop)
    }

    /// Uploads a file to a user's OneDrive at `path`, replacing one of the same path: a simple
    /// `PUT .../root:/{path}:/content` up to [`SIMPLE_UPLOAD_MAX`], above it an upload
    /// session in [`UPLOAD_FRAGMENT`]s. Returns the driveItem.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn upload_file(
        &self,
        connection: &Connection,
        user: &str,
        path: &str,
        content: Vec<u8>,
        content_type: &'static str,
    ) -> Result<Value, GraphError> {
        let path: Vec<String> = path.split('/').map(segment).collect();
        let item = format!("{}/drive/root:/{}:", user_root(user), path.join("/"));
        if content.len() <= SIMPLE_UPLOAD_MAX {
            return self
                .send(
                    connection,
                    &GraphRequest::new(Method::PUT, format!("{item}/content"), "drive")
                        .bytes(content, content_type),
                )
                .await;
        }
        let session = self
            .send(
                connection,
                &GraphRequest::new(Method::POST, format!("{item}/createUploadSession"), "drive")
                    .json(json!({"item": {"@microsoft.graph.conflictBehavior": "replace"}})),
            )
            .await?;
        let upload_url = self.upload_url(&session)?;
        match self
            .upload_fragments(connection, &upload_url, &content)
            .await
        {
            Ok(item) => Ok(item),
            Err(err) => {
                // The session holds the bytes so far for days: cancel it rather than leave it.
                let cancel =
                    GraphRequest::new(Method::DELETE, "", "drive_upload").pre_authenticated();
                let _ = self.send_url(connection, &cancel, upload_url).await;
                Err(err)
            }
        }
    }

    /// The session's upload URL, if it is one tenantd may send file bytes to: HTTPS, or on the
    /// configured Graph host (the emulator).
    fn upload_url(&self, session: &Value) -> Result<url::Url, GraphError> {
        let invalid = || GraphError::Permanent {
            status: 0,
            code: "upload_url_invalid".into(),
        };
        let url = session["uploadUrl"]
            .as_str()
            .and_then(|u| url::Url::parse(u).ok())
            .ok_or_else(invalid)?;
        if url.scheme() == "https" || self.on_graph_host(&url) {
            Ok(url)
        } else {
            Err(invalid())
        }
    }

    /// PUTs `content` to an upload session fragment by fragment, from the range the session
    /// expects next (a fragment Graph already has answers 416; the session's status says where
    /// to go on). Returns the driveItem the last fragment creates.
    async fn upload_fragments(
        &self,
        connection: &Connection,
        upload_url: &url::Url,
        content: &[u8],
    ) -> Result<Value, GraphError> {
        let total = content.len();
        let mut start = 0usize;
        // Every fragment is sent at most twice: once, and once after a status check.
        let mut budget = 2 * total.div_ceil(UPLOAD_FRAGMENT) + 2;
        loop {
            budget = budget.checked_sub(1).ok_or(GraphError::Permanent {
                status: 0,
                code: "upload_not_progressing".into(),
            })?;
            let end = (start + UPLOAD_FRAGMENT).min(total);
            let fragment = GraphRequest::new(Method::PUT, "", "drive_upload")
                .bytes(content[start..end].to_vec(), "application/octet-stream")
                .fragment(format!("bytes {start}-{}/{total}", end - 1));
            match self
                .send_url(connection, &fragment, upload_url.clone())
                .await
            {
                Ok(answer) if answer.get("id").is_some() => return Ok(answer),
                Ok(answer) => start = next_expected(&answer).unwrap_or(end),
                Err(GraphError::Permanent { status: 416, .. }) => {
                    let status =
                        GraphRequest::new(Method::GET, "", "drive_upload").pre_authenticated();
                    let answer = self
                        .send_url(connection, &status, upload_url.clone())
                        .await?;
                    start = next_expected(&answer).ok_or(GraphError::Permanent {
                        status: 416,
                        code: "upload_range_unknown".into(),
                    })?;
                }
                Err(err) => return Err(err),
            }
            if start >= total {
                return Err(GraphError::Permanent {
                    status: 0,
                    code: "upload_not_committed".into(),
                });
            }
        }
    }

    /// `DELETE /users/{id}/drive/items/{id}`.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn delete_drive_item(
        &self,
        connection: &Connection,
        user: &str,
        item_id: &str,
    ) -> Result<(), GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::DELETE,
                format!("{}/drive/items/{}", user_root(user), segment(item_id)),
                "drive",
            ),
        )
        .await
        .map(drop)
    }

    /// `POST /subscriptions`: creates a subscription (Graph first runs the validation handshake
    /// against both URLs). Returns Graph's subscription object.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn create_subscription(
        &self,
        connection: &Connection,
        subscription: &Value,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::new(Method::POST, "/subscriptions", "subscriptions")
                .json(subscription.clone()),
        )
        .await
    }

    /// `GET /subscriptions`: the calling app's subscriptions in the connection's tenant
    /// (api-reference/v1.0/api/subscription-list.md).
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn list_subscriptions(
        &self,
        connection: &Connection,
    ) -> Result<Vec<Value>, GraphError> {
        self.collect(
            connection,
            &GraphRequest::new(Method::GET, "/subscriptions", "subscriptions"),
            10,
        )
        .await
    }

    /// `PATCH /subscriptions/{id}` with a new `expirationDateTime` (RFC 3339). Returns Graph's
    /// subscription object.
    ///
    /// # Errors
    /// [`GraphError`]; `NotFound` when Graph no longer has it.
    pub async fn renew_subscription(
        &self,
        connection: &Connection,
        graph_id: &str,
        expiration: &str,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::PATCH,
                format!("/subscriptions/{}", segment(graph_id)),
                "subscriptions",
            )
            .json(json!({ "expirationDateTime": expiration })),
        )
        .await
    }

    /// `DELETE /subscriptions/{id}`.
    ///
    /// # Errors
    /// [`GraphError`]; `NotFound` when Graph no longer has it.
    pub async fn delete_subscription(
        &self,
        connection: &Connection,
        graph_id: &str,
    ) -> Result<(), GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::DELETE,
                format!("/subscriptions/{}", segment(graph_id)),
                "subscriptions",
            ),
        )
        .await
        .map(|_| ())
    }

    /// `POST /subscriptions/{id}/reauthorize` (answers 204 or 200).
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn reauthorize_subscription(
        &self,
        connection: &Connection,
        graph_id: &str,
    ) -> Result<(), GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::POST,
                format!("/subscriptions/{}/reauthorize", segment(graph_id)),
                "subscriptions",
            ),
        )
        .await
        .map(|_| ())
    }

    /// `GET /users/{id or UPN}`.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn get_user(&self, connection: &Connection, user: &str) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::new(Method::GET, user_root(user), "users"),
        )
        .await
    }

    /// The user with this userPrincipalName, if any (`$filter`).
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn find_user_by_upn(
        &self,
        connection: &Connection,
        upn: &str,
    ) -> Result<Option<Value>, GraphError> {
        self.find_user(connection, upn, None).await
    }

    /// The user with this userPrincipalName, if any, with the `$select`ed properties (Graph's
    /// default set lacks `usageLocation` and `assignedLicenses`).
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn find_user(
        &self,
        connection: &Connection,
        upn: &str,
        select: Option<&str>,
    ) -> Result<Option<Value>, GraphError> {
        let filter = format!("userPrincipalName eq {}", odata_string(upn));
        let mut request =
            GraphRequest::new(Method::GET, "/users", "users").query("$filter", filter);
        if let Some(select) = select {
            request = request.query("$select", select);
        }
        let page = self.send(connection, &request).await?;
        Ok(page["value"]
            .as_array()
            .and_then(|users| users.first().cloned()))
    }

    /// Every user, following pages (`$top`, `@odata.nextLink`).
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn list_users(
        &self,
        connection: &Connection,
        page_size: u32,
    ) -> Result<Vec<Value>, GraphError> {
        self.collect(
            connection,
            &GraphRequest::new(Method::GET, "/users", "users").query("$top", page_size.to_string()),
            1000,
        )
        .await
    }

    /// `POST /users`.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn create_user(
        &self,
        connection: &Connection,
        user: &Value,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::new(Method::POST, "/users", "users").json(user.clone()),
        )
        .await
    }

    /// `GET /subscribedSkus`.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn subscribed_skus(&self, connection: &Connection) -> Result<Vec<Value>, GraphError> {
        let page = self
            .send(
                connection,
                &GraphRequest::new(Method::GET, "/subscribedSkus", "licenses"),
            )
            .await?;
        Ok(page["value"].as_array().cloned().unwrap_or_default())
    }

    /// `POST /users/{id}/assignLicense` with one SKU.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn assign_license(
        &self,
        connection: &Connection,
        user: &str,
        sku_id: &str,
    ) -> Result<Value, GraphError> {
        let body =
            json!({"addLicenses": [{"disabledPlans": [], "skuId": sku_id}], "removeLicenses": []});
        self.send(
            connection,
            &GraphRequest::new(
                Method::POST,
                format!("{}/assignLicense", user_root(user)),
                "licenses",
            )
            .json(body),
        )
        .await
    }

    /// `POST /users/{id}/sendMail`.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn send_mail(
        &self,
        connection: &Connection,
        mailbox: &str,
        message: &Value,
        save_to_sent_items: bool,
    ) -> Result<(), GraphError> {
        let body = json!({"message": message, "saveToSentItems": save_to_sent_items});
        self.send(
            connection,
            &GraphRequest::new(
                Method::POST,
                format!("{}/sendMail", user_root(mailbox)),
                "mail",
            )
            .mailbox(mailbox)
            .json(body),
        )
        .await?;
        Ok(())
    }

    /// `GET /users/{id}/messages` (first page).
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn list_messages(
        &self,
        connection: &Connection,
        mailbox: &str,
    ) -> Result<Vec<Value>, GraphError> {
        let page = self
            .send(
                connection,
                &GraphRequest::new(
                    Method::GET,
                    format!("{}/messages", user_root(mailbox)),
                    "mail",
                )
                .mailbox(mailbox),
            )
            .await?;
        Ok(page["value"].as_array().cloned().unwrap_or_default())
    }

    /// Changes in a mail folder since `delta_link` (the whole folder without one):
    /// `GET /users/{id}/mailFolders/{folder}/messages/delta` with the stored fields, up to
    /// `max_pages` pages. Returns the messages (removed ones carry `@removed`) and the next
    /// delta link.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn message_delta(
        &self,
        connection: &Connection,
        mailbox: &str,
        folder: &str,
        delta_link: Option<&str>,
        max_pages: usize,
    ) -> Result<(Vec<Value>, Option<String>), GraphError> {
        let request = GraphRequest::new(
            Method::GET,
            format!(
                "{}/mailFolders/{}/messages/delta",
                user_root(mailbox),
                segment(folder)
            ),
            "mail",
        )
        .query("$select", crate::mailbox::SELECT)
        .mailbox(mailbox);
        self.delta(connection, &request, delta_link, max_pages)
            .await
    }

    /// A user's newest messages with the stored fields, 50 a page, up to `max_pages` pages;
    /// with `received_since` (RFC 3339, UTC) only those received at or after it.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn newest_messages(
        &self,
        connection: &Connection,
        mailbox: &str,
        received_since: Option<&str>,
        max_pages: usize,
    ) -> Result<Vec<Value>, GraphError> {
        let mut request = GraphRequest::new(
            Method::GET,
            format!("{}/messages", user_root(mailbox)),
            "mail",
        )
        .query("$select", crate::mailbox::SELECT);
        if let Some(since) = received_since {
            // `$filter` and `$orderby` on the same property, as Outlook requires.
            request = request.query("$filter", format!("receivedDateTime ge {since}"));
        }
        let request = request
            .query("$orderby", "receivedDateTime desc")
            .query("$top", "50")
            .mailbox(mailbox);
        self.collect(connection, &request, max_pages).await
    }
}

/// The Teams Developer Portal's answers tenantd reads.
impl GraphClient {
    /// `GET /api/usersettings/mtUserAppPolicy`: whether the signed-in user may upload custom
    /// apps (`value.isSideloadingAllowed`, graph-protocol.md §6.2). An answer without the
    /// field is an error, never a guess.
    ///
    /// # Errors
    /// [`GraphError`]; `Permanent` with code `unrecognised_policy` for an answer of another
    /// shape.
    pub async fn sideloading_allowed(&self, connection: &Connection) -> Result<bool, GraphError> {
        let policy = self
            .send(
                connection,
                &GraphRequest::developer_portal(Method::GET, "/usersettings/mtUserAppPolicy"),
            )
            .await?;
        policy["value"]["isSideloadingAllowed"]
            .as_bool()
            .ok_or_else(|| GraphError::Permanent {
                status: 200,
                code: "unrecognised_policy".into(),
            })
    }

    /// `POST /api/appdefinitions/v2/import` with a Teams app package (`application/zip`);
    /// `overwrite` replaces an app of the same id in the tenant. Returns the app definition
    /// (`teamsAppId`, `appId`, `bots`, …).
    ///
    /// # Errors
    /// [`GraphError`]; `Conflict` when the app exists and `overwrite` is false, or exists in
    /// another tenant.
    pub async fn import_app_package(
        &self,
        connection: &Connection,
        package: Vec<u8>,
        overwrite: bool,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::developer_portal(Method::POST, "/appdefinitions/v2/import")
                .query("overwriteIfAppAlreadyExists", overwrite.to_string())
                .bytes(package, "application/zip"),
        )
        .await
    }

    /// `PATCH /applications(uniqueName='…')` with `Prefer: create-if-missing`
    /// (application-upsert.md): creates the application once, whatever how often it is asked
    /// for; returns it either way (a `204` for an existing one is followed by a read).
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn upsert_application(
        &self,
        connection: &Connection,
        unique_name: &str,
        application: &Value,
    ) -> Result<Value, GraphError> {
        let path = format!("/applications(uniqueName='{unique_name}')");
        let created = self
            .send(
                connection,
                &GraphRequest::new(Method::PATCH, path.clone(), "applications")
                    .prefer("create-if-missing")
                    .json(application.clone()),
            )
            .await?;
        if created.get("appId").is_some() {
            return Ok(created);
        }
        self.send(
            connection,
            &GraphRequest::new(Method::GET, path, "applications"),
        )
        .await
    }

    /// `POST /applications/{id}/addPassword` (application-addpassword.md): a new client
    /// secret ending at `end` (RFC 3339; Graph's default is two years); `secretText` is in
    /// this answer only.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn add_password(
        &self,
        connection: &Connection,
        application_id: &str,
        display_name: &str,
        end: Option<&str>,
    ) -> Result<Value, GraphError> {
        let mut credential = json!({ "displayName": display_name });
        if let Some(end) = end {
            credential["endDateTime"] = json!(end);
        }
        self.send(
            connection,
            &GraphRequest::new(
                Method::POST,
                format!("/applications/{application_id}/addPassword"),
                "applications",
            )
            .json(json!({ "passwordCredential": credential })),
        )
        .await
    }

    /// `GET /applications/{id}`.
    ///
    /// # Errors
    /// [`GraphError`]; `NotFound` when it does not exist.
    pub async fn application(
        &self,
        connection: &Connection,
        application_id: &str,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::GET,
                format!("/applications/{application_id}"),
                "applications",
            ),
        )
        .await
    }

    /// `POST /applications/{id}/removePassword` of the credential `key_id`.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn remove_password(
        &self,
        connection: &Connection,
        application_id: &str,
        key_id: &str,
    ) -> Result<(), GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::POST,
                format!("/applications/{application_id}/removePassword"),
                "applications",
            )
            .json(json!({ "keyId": key_id })),
        )
        .await
        .map(|_| ())
    }

    /// `POST /api/botframework` (graph-protocol.md §6.2): registers the bot; `Conflict` when
    /// a bot with its `botId` exists (update it with [`GraphClient::update_bot`]).
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn register_bot(
        &self,
        connection: &Connection,
        bot: &Value,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::developer_portal(Method::POST, "/botframework").json(bot.clone()),
        )
        .await
    }

    /// `POST /api/botframework/{botId}` with the full registration: updates it.
    ///
    /// # Errors
    /// [`GraphError`].
    pub async fn update_bot(
        &self,
        connection: &Connection,
        bot_id: &str,
        bot: &Value,
    ) -> Result<Value, GraphError> {
        self.send(
            connection,
            &GraphRequest::developer_portal(Method::POST, format!("/botframework/{bot_id}"))
                .json(bot.clone()),
        )
        .await
    }

    /// `DELETE /applications/{id}`: the app registration (and its credentials).
    ///
    /// # Errors
    /// [`GraphError`]; `NotFound` when it is gone already.
    pub async fn delete_application(
        &self,
        connection: &Connection,
        application_id: &str,
    ) -> Result<(), GraphError> {
        self.send(
            connection,
            &GraphRequest::new(
                Method::DELETE,
                format!("/applications/{application_id}"),
                "applications",
            ),
        )
        .await
        .map(drop)
    }

    /// `DELETE /api/appdefinitions/{teamsAppId}`: the Teams app from the tenant's catalog.
    ///
    /// # Errors
    /// [`GraphError`]; `NotFound` when it is gone already.
    pub async fn delete_app_definition(
        &self,
        connection: &Connection,
        teams_app_id: &str,
    ) -> Result<(), GraphError> {
        self.send(
            connection,
            &GraphRequest::developer_portal(
                Method::DELETE,
                format!("/appdefinitions/{teams_app_id}"),
            ),
        )
        .await
        .map(drop)
    }

    /// `DELETE /api/botframework/{botId}`: the bot registration.
    ///
    /// # Errors
    /// [`GraphError`]; `NotFound` when it is gone already.
    pub async fn delete_bot(
        &self,
        connection: &Connection,
        bot_id: &str,
    ) -> Result<(), GraphError> {
        self.send(
            connection,
            &GraphRequest::developer_portal(Method::DELETE, format!("/botframework/{bot_id}")),
        )
        .await
        .map(drop)
    }
}
