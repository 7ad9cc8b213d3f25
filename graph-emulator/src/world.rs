//! The emulated Microsoft cloud: tenants, app registrations and their grants, users with their
//! mailboxes, calendars and drives, chats, Graph application objects, Developer Portal apps and
//! bots, subscriptions, and the identity platform's outstanding grants (refresh tokens, device
//! codes, authorization codes).
//!
//! Invariants: a tenant is keyed by its GUID and every verified domain maps back to it; a user's
//! mailbox and drive answer only once the user is licensed and the provisioning delay has passed
//! (Graph provisions both asynchronously after licensing); every id handed out is unique for the
//! life of the emulator. The world is plain data behind one mutex that is never held across an
//! await.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::{Duration, OffsetDateTime};

use crate::clock;

/// The resource URI of Microsoft Graph, the audience of Graph tokens.
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
/// The resource URI of the Teams Developer Portal (`AppDefinitions.ReadWrite`).
pub const DEV_PORTAL_RESOURCE: &str = "https://dev.teams.microsoft.com";

/// The cloud the emulator stands in for: it decides the Graph resource URI (the audience of
/// Graph tokens). Hosts from learn.microsoft.com/graph/deployments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    /// Microsoft Graph global service (`graph.microsoft.com`).
    #[default]
    Global,
    /// US Government L4 (`graph.microsoft.us`).
    Usgov,
    /// US Government L5 (DOD) (`dod-graph.microsoft.us`).
    UsgovDod,
    /// Microsoft Graph operated by 21Vianet in China (`microsoftgraph.chinacloudapi.cn`).
    China,
}

impl Cloud {
    /// Microsoft Graph's resource URI in this cloud.
    pub fn graph_resource(self) -> &'static str {
        match self {
            Cloud::Global => GRAPH_RESOURCE,
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::UsgovDod => "https://dod-graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    /// Parses `global`, `usgov`, `usgov-dod` or `china`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "global" => Cloud::Global,
            "usgov" => Cloud::Usgov,
            "usgov-dod" => Cloud::UsgovDod,
            "china" => Cloud::China,
            _ => return None,
        })
    }
}

/// An API a token can be issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Resource {
    /// Microsoft Graph.
    Graph,
    /// The Teams Developer Portal.
    DevPortal,
}

impl Resource {
    /// The resource URI (token audience).
    pub fn uri(self) -> &'static str {
        match self {
            Resource::Graph => GRAPH_RESOURCE,
            Resource::DevPortal => DEV_PORTAL_RESOURCE,
        }
    }

    /// The resource URI (token audience) in `cloud`.
    pub fn uri_in(self, cloud: Cloud) -> &'static str {
        match self {
            Resource::Graph => cloud.graph_resource(),
            Resource::DevPortal => DEV_PORTAL_RESOURCE,
        }
    }

    /// The resource a URI (with or without a trailing slash) names in `cloud`: another
    /// cloud's Graph is not this one's.
    pub fn from_uri_in(uri: &str, cloud: Cloud) -> Option<Self> {
        match uri.trim_end_matches('/') {
            "00000003-0000-0000-c000-000000000000" => Some(Resource::Graph),
            graph if graph == cloud.graph_resource() => Some(Resource::Graph),
            DEV_PORTAL_RESOURCE => Some(Resource::DevPortal),
            _ => None,
        }
    }
}

/// A secret of an app registration.
#[derive(Debug, Clone)]
pub struct ClientSecret {
    /// The credential's key id.
    pub key_id: String,
    /// The secret text.
    pub text: String,
    /// When it stops working.
    pub end: OffsetDateTime,
}

/// An app registration (multi-tenant): what a client id authenticates with.
#[derive(Debug, Clone)]
pub struct AppRegistration {
    /// The client (application) id.
    pub client_id: String,
    /// Display name, used in AADSTS messages.
    pub display_name: String,
    /// The tenant it was registered in.
    pub home_tenant: String,
    /// Client secrets; empty for a public client.
    pub secrets: Vec<ClientSecret>,
    /// Redirect URIs for the authorization code flow and admin consent.
    pub redirect_uris: Vec<String>,
    /// The application permissions it asks for (granted by admin consent to `/.default`).
    pub requested_roles: BTreeMap<Resource, BTreeSet<String>>,
    /// The delegated permissions it asks for.
    pub requested_scopes: BTreeMap<Resource, BTreeSet<String>>,
    /// Secrets added through Graph's `addPassword` start working only after this instant
    /// (replication delay).
    pub usable_from: OffsetDateTime,
}

/// A service principal's grants in one tenant: its existence means the app is in the tenant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// Application permissions (the `roles` claim).
    pub roles: BTreeMap<Resource, BTreeSet<String>>,
    /// Admin-consented delegated permissions (the `scp` claim).
    pub scopes: BTreeMap<Resource, BTreeSet<String>>,
}

/// A subscribed SKU of a tenant.
#[derive(Debug, Clone)]
pub struct Sku {
    /// The SKU id (GUID).
    pub sku_id: String,
    /// e.g. `ENTERPRISEPACK`.
    pub part_number: String,
    /// Purchased seats.
    pub seats: u32,
    /// Whether the SKU includes Exchange Online and OneDrive.
    pub includes_mailbox: bool,
}

/// What the emulated admin answers on the admin consent page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum ConsentOutcome {
    /// The admin accepts.
    #[default]
    Approve,
    /// The admin cancels.
    Refuse,
}

/// A mail folder.
#[derive(Debug, Clone)]
pub struct Folder {
    /// Folder id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// Well-known name (`inbox`, `sentitems`, ...).
    pub well_known: &'static str,
}

/// A user's Exchange mailbox.
#[derive(Debug, Clone, Default)]
pub struct Mailbox {
    /// Folders by id.
    pub folders: Vec<Folder>,
    /// Messages by id, as Graph renders them.
    pub messages: BTreeMap<String, Value>,
    /// Events by id, as Graph renders them.
    pub events: BTreeMap<String, Value>,
    /// Every change to a message, oldest first, for delta queries.
    pub message_changes: Vec<MessageChange>,
    /// Single-value extended properties set on messages at creation (message id → (property
    /// id, value)); Graph returns them only on `$expand`, so they are kept apart.
    pub extended_properties: BTreeMap<String, Vec<(String, String)>>,
}

/// One change to a message, for delta queries.
#[derive(Debug, Clone)]
pub struct MessageChange {
    /// Position in the mailbox's change sequence (from 1).
    pub sequence: u64,
    /// The message.
    pub message_id: String,
    /// Its folder at the time.
    pub folder_id: String,
}

impl Mailbox {
    /// The last change's position in the sequence (0 before any change).
    pub fn sequence(&self) -> u64 {
        self.message_changes.last().map_or(0, |c| c.sequence)
    }

    /// Records that `message` was created, changed or deleted.
    pub fn record_message_change(&mut self, message: &Value) {
        let sequence = self.sequence() + 1;
        self.message_changes.push(MessageChange {
            sequence,
            message_id: message["id"].as_str().unwrap_or_default().to_string(),
            folder_id: message["parentFolderId"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        });
    }

    /// Stores `message` (new or changed) and records the change.
    pub fn put_message(&mut self, message: Value) {
        self.record_message_change(&message);
        let id = message["id"].as_str().unwrap_or_default().to_string();
        self.messages.insert(id, message);
    }

    /// Removes a message and records the change.
    pub fn take_message(&mut self, id: &str) -> Option<Value> {
        let message = self.messages.remove(id)?;
        self.record_message_change(&message);
        Some(message)
    }

    fn provisioned() -> Self {
        let folders = [
            ("inbox", "Inbox"),
            ("drafts", "Drafts"),
            ("sentitems", "Sent Items"),
            ("deleteditems", "Deleted Items"),
            ("archive", "Archive"),
        ]
        .into_iter()
        .map(|(well_known, display_name)| Folder {
            id: new_outlook_id("AQMk"),
            display_name: display_name.into(),
            well_known,
        })
        .collect();
        Self {
            folders,
            ..Self::default()
        }
    }

    /// The folder a path segment names: a well-known name (any case) or an id.
    pub fn folder(&self, name_or_id: &str) -> Option<&Folder> {
        self.folders.iter().find(|folder| {
            folder.id == name_or_id || folder.well_known.eq_ignore_ascii_case(name_or_id)
        })
    }
}

/// A user's OneDrive.
#[derive(Debug, Clone)]
pub struct Drive {
    /// Drive id.
    pub id: String,
    /// The root folder's item id.
    pub root_id: String,
    /// Items by id, as Graph renders them (the root included).
    pub items: BTreeMap<String, Value>,
}

/// A directory user.
#[derive(Debug, Clone)]
pub struct User {
    /// Object id (GUID).
    pub id: String,
    /// userPrincipalName.
    pub upn: String,
    /// Properties as Graph stores them (`displayName`, `mailNickname`, `usageLocation`, ...).
    pub properties: serde_json::Map<String, Value>,
    /// Assigned SKU ids.
    pub licenses: Vec<String>,
    /// When the mailbox and drive become available (after licensing).
    pub services_ready_at: Option<OffsetDateTime>,
    /// Mailbox, once provisioned.
    pub mailbox: Option<Mailbox>,
    /// Drive, once provisioned.
    pub drive: Option<Drive>,
}

impl User {
    /// Provisions the mailbox and drive when their time has come; true when they exist.
    pub fn services_ready(&mut self, now: OffsetDateTime) -> bool {
        match self.services_ready_at {
            Some(at) if at <= now => {
                if self.mailbox.is_none() {
                    self.mailbox = Some(Mailbox::provisioned());
                }
                if self.drive.is_none() {
                    self.drive = Some(new_drive(self, now));
                }
                true
            }
            _ => false,
        }
    }

    /// `displayName`.
    pub fn display_name(&self) -> String {
        self.properties
            .get("displayName")
            .and_then(Value::as_str)
            .unwrap_or(&self.upn)
            .to_string()
    }

    /// The primary SMTP address (`mail`, else the UPN).
    pub fn address(&self) -> String {
        self.properties
            .get("mail")
            .and_then(Value::as_str)
            .unwrap_or(&self.upn)
            .to_string()
    }

    /// `{"emailAddress": {"name", "address"}}` as in `from`, `sender`, recipients.
    pub fn email_address(&self) -> Value {
        json!({"emailAddress": {"name": self.display_name(), "address": self.address()}})
    }
}

fn new_drive(user: &User, now: OffsetDateTime) -> Drive {
    let id = format!("b!{}", uuid::Uuid::new_v4().simple());
    let root_id = new_drive_item_id();
    let root = json!({
        "id": root_id,
        "name": "root",
        "root": {},
        "folder": {"childCount": 0},
        "size": 0,
        "createdDateTime": clock::graph(now),
        "lastModifiedDateTime": clock::graph(now),
        "webUrl": format!("https://contoso-my.sharepoint.com/personal/{}/Documents", user.upn.replace(['@', '.'], "_")),
        "parentReference": {"driveId": id, "driveType": "business"},
    });
    Drive {
        id,
        root_id: root_id.clone(),
        items: BTreeMap::from([(root_id, root)]),
    }
}

/// A Teams chat.
#[derive(Debug, Clone)]
pub struct Chat {
    /// The chat as Graph renders it.
    pub chat: Value,
    /// Member user ids.
    pub members: BTreeSet<String>,
    /// Messages by id.
    pub messages: BTreeMap<String, Value>,
    /// Created with `@microsoft.graph.chatCreationMode: migration` (import allowed app-only).
    pub migration_mode: bool,
}

/// An Entra tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Tenant id (GUID).
    pub id: String,
    /// Organization name.
    pub display_name: String,
    /// Verified domains, the first is the default (`contoso.onmicrosoft.com`).
    pub domains: Vec<String>,
    /// Users by id.
    pub users: BTreeMap<String, User>,
    /// Subscribed SKUs.
    pub skus: Vec<Sku>,
    /// Service principals' grants by client id.
    pub grants: BTreeMap<String, Grant>,
    /// Chats by id.
    pub chats: BTreeMap<String, Chat>,
    /// Graph `application` objects by object id.
    pub applications: BTreeMap<String, Value>,
    /// Developer Portal app definitions by teamsAppId.
    pub app_definitions: BTreeMap<String, Value>,
    /// Developer Portal bot registrations by botId.
    pub bots: BTreeMap<String, Value>,
    /// `mtUserAppPolicy.isSideloadingAllowed`.
    pub sideloading_allowed: bool,
    /// What the admin answers on the consent page.
    pub consent_outcome: ConsentOutcome,
    /// Exchange application access policies (`RestrictAccess`) by client id: the users whose
    /// mailboxes and calendars the app may reach app-only; every other one answers 403
    /// `ErrorAccessDenied` "Access to OData is disabled." (RBAC for Applications scopes alike).
    pub mailbox_scopes: BTreeMap<String, BTreeSet<String>>,
}

impl Tenant {
    /// A user by id or userPrincipalName (case-insensitive, as Graph matches UPNs).
    pub fn user_key(&self, id_or_upn: &str) -> Option<String> {
        if self.users.contains_key(id_or_upn) {
            return Some(id_or_upn.to_string());
        }
        self.users
            .values()
            .find(|user| user.upn.eq_ignore_ascii_case(id_or_upn))
            .map(|user| user.id.clone())
    }

    /// The user whose primary address or UPN is `address`.
    pub fn user_by_address(&self, address: &str) -> Option<String> {
        self.users
            .values()
            .find(|user| {
                user.upn.eq_ignore_ascii_case(address)
                    || user.address().eq_ignore_ascii_case(address)
            })
            .map(|user| user.id.clone())
    }

    /// Consumed seats of a SKU.
    pub fn consumed(&self, sku_id: &str) -> u32 {
        let count = self
            .users
            .values()
            .filter(|user| user.licenses.iter().any(|id| id == sku_id))
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }
}

/// An outstanding refresh token.
#[derive(Debug, Clone)]
pub struct RefreshGrant {
    /// Tenant that issued it.
    pub tenant: String,
    /// Client it was issued to.
    pub client_id: String,
    /// The signed-in user.
    pub user_id: String,
    /// When it was issued.
    pub issued: OffsetDateTime,
    /// When it stops working.
    pub expires: OffsetDateTime,
}

/// The state of a device code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCodeState {
    /// Waiting for the user.
    Pending,
    /// The user signed in and approved.
    Approved {
        /// The user's tenant.
        tenant: String,
        /// The user.
        user_id: String,
    },
    /// The user declined.
    Declined,
    /// Tokens were issued; the code is spent.
    Redeemed,
}

/// An outstanding device code.
#[derive(Debug, Clone)]
pub struct DeviceCode {
    /// The code the client polls with.
    pub device_code: String,
    /// The code the user types.
    pub user_code: String,
    /// The authority segment it was requested on (a GUID, domain or `organizations`).
    pub authority: String,
    /// Client id.
    pub client_id: String,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Expiry.
    pub expires: OffsetDateTime,
    /// Minimum polling interval in seconds (grows by 5 s on each `slow_down`).
    pub interval: u64,
    /// Last poll.
    pub last_poll: Option<OffsetDateTime>,
    /// State.
    pub state: DeviceCodeState,
}

/// An authorization code awaiting redemption.
#[derive(Debug, Clone)]
pub struct AuthCode {
    /// Tenant.
    pub tenant: String,
    /// Client id.
    pub client_id: String,
    /// The user who signed in.
    pub user_id: String,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Redirect URI it was issued for.
    pub redirect_uri: String,
    /// PKCE challenge and method.
    pub challenge: Option<(String, String)>,
    /// Expiry (10 minutes).
    pub expires: OffsetDateTime,
    /// Redeemed already.
    pub redeemed: bool,
}

/// A switchable identity failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityFailure {
    /// AADSTS65001.
    ConsentRequired,
    /// AADSTS50076.
    MfaRequired,
    /// AADSTS53003.
    BlockedByConditionalAccess,
    /// AADSTS700082.
    RefreshTokenExpired,
    /// AADSTS50173.
    RefreshTokenRevoked,
    /// AADSTS7000215.
    BadClientSecret,
    /// AADSTS700016.
    AppNotInTenant,
    /// AADSTS90002.
    UnknownTenant,
}

/// Where a switched-on failure applies; an absent field matches everything.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailureRule {
    /// Tenant id or domain.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Client id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User id or UPN.
    #[serde(default)]
    pub user: Option<String>,
    /// The failure.
    pub failure: IdentityFailure,
}

/// What a subscription watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// Messages of a mailbox, optionally one folder (by folder id).
    Messages {
        /// Mailbox owner.
        user_id: String,
        /// Folder id, or all folders.
        folder_id: Option<String>,
    },
    /// Events of a user's calendar.
    Events {
        /// Calendar owner.
        user_id: String,
    },
    /// The root of a user's drive (OneDrive for Business allows only the root).
    DriveRoot {
        /// Drive owner.
        user_id: String,
    },
    /// All users of the tenant.
    Users,
    /// Messages of one chat, or of all chats (`chats/getAllMessages`).
    ChatMessages {
        /// The chat, or every chat.
        chat_id: Option<String>,
    },
}

impl Watched {
    /// Maximum subscription lifetime in minutes, from the table on
    /// https://learn.microsoft.com/graph/api/resources/subscription (Outlook 10,080 or 1,440
    /// with resource data; driveItem 42,300; user 41,760; Teams chatMessage 4,320).
    pub fn max_minutes(&self, include_resource_data: bool) -> i64 {
        match self {
            Watched::Messages { .. } | Watched::Events { .. } => {
                if include_resource_data {
                    1_440
                } else {
                    10_080
                }
            }
            Watched::DriveRoot { .. } => 42_300,
            Watched::Users => 41_760,
            Watched::ChatMessages { .. } => 4_320,
        }
    }

    /// Teams resources need a lifecycle URL when they live longer than an hour.
    pub fn is_teams(&self) -> bool {
        matches!(self, Watched::ChatMessages { .. })
    }
}

/// A change-notification subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Subscription id (GUID).
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Client id of the creating app (`applicationId`).
    pub application_id: String,
    /// The creating user (delegated) or service principal (app-only) (`creatorId`).
    pub creator_id: String,
    /// The resource as given.
    pub resource: String,
    /// What it watches.
    pub watched: Watched,
    /// `created`, `updated`, `deleted`.
    pub change_types: Vec<String>,
    /// Where notifications go.
    pub notification_url: String,
    /// Where lifecycle notifications go.
    pub lifecycle_url: Option<String>,
    /// Echoed in every notification.
    pub client_state: Option<String>,
    /// Expiry.
    pub expiration: OffsetDateTime,
    /// `includeResourceData`.
    pub include_resource_data: bool,
    /// Everything else Graph echoes back (`latestSupportedTlsVersion`, certificate fields).
    pub echo: serde_json::Map<String, Value>,
}

impl Subscription {
    /// The subscription as Graph renders it.
    pub fn render(&self) -> Value {
        let mut out = serde_json::Map::new();
        out.insert("id".into(), json!(self.id));
        out.insert("resource".into(), json!(self.resource));
        out.insert("applicationId".into(), json!(self.application_id));
        out.insert("changeType".into(), json!(self.change_types.join(",")));
        out.insert("clientState".into(), json!(self.client_state));
        out.insert("notificationUrl".into(), json!(self.notification_url));
        out.insert("notificationQueryOptions".into(), Value::Null);
        out.insert("lifecycleNotificationUrl".into(), json!(self.lifecycle_url));
        out.insert(
            "expirationDateTime".into(),
            json!(clock::graph(self.expiration)),
        );
        out.insert("creatorId".into(), json!(self.creator_id));
        out.insert(
            "includeResourceData".into(),
            json!(self.include_resource_data),
        );
        for (key, default) in [
            ("latestSupportedTlsVersion", json!("v1_2")),
            ("encryptionCertificate", Value::Null),
            ("encryptionCertificateId", Value::Null),
            ("notificationUrlAppId", Value::Null),
        ] {
            out.insert(key.into(), self.echo.get(key).cloned().unwrap_or(default));
        }
        out.insert("notificationContentType".into(), json!("application/json"));
        Value::Object(out)
    }
}

/// An upload session for a large OneDrive file.
#[derive(Debug, Clone)]
pub struct UploadSession {
    /// Tenant.
    pub tenant: String,
    /// Drive owner.
    pub user_id: String,
    /// Folder path segments and file name.
    pub path: Vec<String>,
    /// Who uploads (`createdBy`).
    pub actor: Value,
    /// Bytes received so far.
    pub received: Vec<u8>,
    /// Total size once known.
    pub total: Option<u64>,
    /// Expiry.
    pub expires: OffsetDateTime,
    /// `@microsoft.graph.conflictBehavior`.
    pub conflict: String,
}

/// The whole emulated cloud.
#[derive(Debug, Default)]
pub struct World {
    /// Tenants by id.
    pub tenants: BTreeMap<String, Tenant>,
    /// App registrations by client id.
    pub apps: BTreeMap<String, AppRegistration>,
    /// Outstanding refresh tokens.
    pub refresh_tokens: HashMap<String, RefreshGrant>,
    /// Outstanding device codes by device_code.
    pub device_codes: HashMap<String, DeviceCode>,
    /// Authorization codes.
    pub auth_codes: HashMap<String, AuthCode>,
    /// Subscriptions by id.
    pub subscriptions: BTreeMap<String, Subscription>,
    /// Upload sessions by id.
    pub upload_sessions: HashMap<String, UploadSession>,
    /// Switched-on identity failures.
    pub failures: Vec<FailureRule>,
    /// The last chat message id handed out (they are millisecond timestamps).
    last_message_id: i64,
}

/// What went wrong seeding the world.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The tenant does not exist.
    #[error("unknown tenant `{0}`")]
    UnknownTenant(String),
    /// The id or name is taken.
    #[error("`{0}` already exists")]
    Exists(String),
    /// A value is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

/// A tenant to seed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantSeed {
    /// Tenant id; generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Default domain, e.g. `contoso.onmicrosoft.com`.
    pub domain: String,
    /// Organization name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// SKUs to subscribe: (part number, seats). Defaults to 25 seats of ENTERPRISEPACK.
    #[serde(default)]
    pub skus: Option<Vec<SkuSeed>>,
}

/// A SKU to subscribe.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SkuSeed {
    /// e.g. `ENTERPRISEPACK`.
    pub sku_part_number: String,
    /// Seats.
    pub seats: u32,
    /// Includes Exchange and OneDrive (default true).
    #[serde(default = "yes")]
    pub includes_mailbox: bool,
}

fn yes() -> bool {
    true
}

/// An app registration to seed, with its grants in one tenant.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppSeed {
    /// Client id; generated when absent.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Client secret; generated when absent unless `publicClient`.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// A public client has no secret (device code flow).
    #[serde(default)]
    pub public_client: bool,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Redirect URIs.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Application permissions the app requests, e.g. `User.ReadWrite.All` (Graph) or
    /// `https://dev.teams.microsoft.com/AppDefinitions.ReadWrite`.
    #[serde(default)]
    pub application_permissions: Vec<String>,
    /// Delegated permissions the app requests.
    #[serde(default)]
    pub delegated_permissions: Vec<String>,
    /// Whether an admin of the tenant already consented (default true). When false the app is
    /// not in the tenant until admin consent.
    #[serde(default = "yes")]
    pub admin_consented: bool,
}

/// A user to seed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserSeed {
    /// userPrincipalName.
    pub user_principal_name: String,
    /// Display name; derived from the UPN when absent.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Usage location (two letters).
    #[serde(default)]
    pub usage_location: Option<String>,
    /// Assign a license of this SKU part number (mailbox and drive follow).
    #[serde(default)]
    pub license: Option<String>,
}

/// Splits a permission such as `https://dev.teams.microsoft.com/AppDefinitions.ReadWrite` or
/// `Mail.Send` (Graph) into its resource and name.
pub fn split_permission(permission: &str) -> Option<(Resource, String)> {
    split_permission_in(permission, Cloud::Global)
}

/// [`split_permission`] in `cloud`: `https://graph.microsoft.us/Mail.Send` is Graph there.
pub fn split_permission_in(permission: &str, cloud: Cloud) -> Option<(Resource, String)> {
    for resource in [Resource::Graph, Resource::DevPortal] {
        if let Some(name) = permission.strip_prefix(resource.uri_in(cloud)) {
            return Some((resource, name.trim_start_matches('/').to_string()));
        }
    }
    if permission.contains("://") {
        None
    } else {
        Some((Resource::Graph, permission.to_string()))
    }
}

fn permission_map(
    permissions: &[String],
) -> Result<BTreeMap<Resource, BTreeSet<String>>, SeedError> {
    let mut map: BTreeMap<Resource, BTreeSet<String>> = BTreeMap::new();
    for permission in permissions {
        let (resource, name) = split_permission(permission)
            .ok_or_else(|| SeedError::Invalid(format!("unknown resource in `{permission}`")))?;
        map.entry(resource).or_default().insert(name);
    }
    Ok(map)
}

/// The object id of an app's service principal in a tenant: a GUID, as Graph's `creatorId`
/// for app-only subscriptions is (concepts/outlook-change-notifications-overview.md), stable
/// for the same app and tenant.
pub fn service_principal_id(tenant: &str, client_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{tenant}|{client_id}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// A new GUID.
pub fn guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An Outlook-style item id (`AAMkAG...`), URL-safe.
pub fn new_outlook_id(prefix: &str) -> String {
    use base64::Engine;
    let mut bytes = Vec::with_capacity(48);
    for _ in 0..3 {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A driveItem id (`01BYE5RZ...`, 34 upper-case characters).
pub fn new_drive_item_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    format!("01{}", &hex[..32])
}

/// A random secret of `len` URL-safe characters.
pub fn random_secret(len: usize) -> String {
    use base64::Engine;
    let mut bytes = Vec::new();
    while bytes.len() * 4 / 3 < len {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    let mut text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    text.truncate(len);
    text
}

impl World {
    /// The tenant an authority segment or domain names.
    pub fn tenant_id(&self, id_or_domain: &str) -> Option<String> {
        if self.tenants.contains_key(id_or_domain) {
            return Some(id_or_domain.to_string());
        }
        self.tenants
            .values()
            .find(|tenant| {
                tenant
                    .domains
                    .iter()
                    .any(|domain| domain.eq_ignore_ascii_case(id_or_domain))
            })
            .map(|tenant| tenant.id.clone())
    }

    /// A tenant by id.
    pub fn tenant_mut(&mut self, id: &str) -> Result<&mut Tenant, SeedError> {
        self.tenants
            .get_mut(id)
            .ok_or_else(|| SeedError::UnknownTenant(id.to_string()))
    }

    /// Creates a tenant.
    ///
    /// # Errors
    /// The id or domain is taken.
    pub fn seed_tenant(&mut self, seed: TenantSeed) -> Result<String, SeedError> {
        let id = seed.id.unwrap_or_else(guid);
        if uuid::Uuid::parse_str(&id).is_err() {
            return Err(SeedError::Invalid(format!(
                "tenant id `{id}` is not a GUID"
            )));
        }
        if self.tenant_id(&id).is_some() || self.tenant_id(&seed.domain).is_some() {
            return Err(SeedError::Exists(format!("tenant {id} / {}", seed.domain)));
        }
        let skus = seed.skus.unwrap_or_else(|| {
            vec![SkuSeed {
                sku_part_number: "ENTERPRISEPACK".into(),
                seats: 25,
                includes_mailbox: true,
            }]
        });
        let tenant = Tenant {
            id: id.clone(),
            display_name: seed
                .display_name
                .unwrap_or_else(|| seed.domain.split('.').next().unwrap_or("Contoso").into()),
            domains: vec![seed.domain],
            users: BTreeMap::new(),
            skus: skus
                .into_iter()
                .map(|sku| Sku {
                    sku_id: guid(),
                    part_number: sku.sku_part_number,
                    seats: sku.seats,
                    includes_mailbox: sku.includes_mailbox,
                })
                .collect(),
            grants: BTreeMap::new(),
            chats: BTreeMap::new(),
            applications: BTreeMap::new(),
            app_definitions: BTreeMap::new(),
            bots: BTreeMap::new(),
            sideloading_allowed: true,
            consent_outcome: ConsentOutcome::Approve,
            mailbox_scopes: BTreeMap::new(),
        };
        self.tenants.insert(id.clone(), tenant);
        Ok(id)
    }

    /// Registers an app (home tenant `tenant`) and, when consented, its grants there.
    /// Returns the client id and the secret.
    ///
    /// # Errors
    /// Unknown tenant, taken client id, unknown permission resource.
    pub fn seed_app(
        &mut self,
        tenant: &str,
        seed: AppSeed,
        now: OffsetDateTime,
    ) -> Result<(String, Option<String>), SeedError> {
        let tenant_id = self
            .tenant_id(tenant)
            .ok_or_else(|| SeedError::UnknownTenant(tenant.to_string()))?;
        let client_id = seed.client_id.unwrap_or_else(guid);
        let roles = permission_map(&seed.application_permissions)?;
        let scopes = permission_map(&seed.delegated_permissions)?;
        let secret = if seed.public_client {
            None
        } else {
            Some(seed.client_secret.unwrap_or_else(|| random_secret(40)))
        };
        if let Some(existing) = self.apps.get_mut(&client_id) {
            // The same multi-tenant app consented in another tenant.
            if let Some(secret) = &secret {
                if !existing.secrets.iter().any(|s| &s.text == secret) {
                    return Err(SeedError::Exists(format!(
                        "app {client_id} with another secret"
                    )));
                }
            }
        } else {
            self.apps.insert(
                client_id.clone(),
                AppRegistration {
                    client_id: client_id.clone(),
                    display_name: seed.display_name.unwrap_or_else(|| "tenantd".into()),
                    home_tenant: tenant_id.clone(),
                    secrets: secret
                        .iter()
                        .map(|text| ClientSecret {
                            key_id: guid(),
                            text: text.clone(),
                            end: now + Duration::days(730),
                        })
                        .collect(),
                    redirect_uris: seed.redirect_uris,
                    requested_roles: roles.clone(),
                    requested_scopes: scopes.clone(),
                    usable_from: now,
                },
            );
        }
        if seed.admin_consented {
            self.tenant_mut(&tenant_id)?
                .grants
                .insert(client_id.clone(), Grant { roles, scopes });
        }
        Ok((client_id, secret))
    }

    /// Creates a user, licensed when asked (services ready after `provisioning_delay`).
    ///
    /// # Errors
    /// Unknown tenant, taken UPN, UPN outside the tenant's domains, unknown SKU.
    pub fn seed_user(
        &mut self,
        tenant: &str,
        seed: UserSeed,
        now: OffsetDateTime,
        provisioning_delay: Duration,
    ) -> Result<String, SeedError> {
        let tenant_id = self
            .tenant_id(tenant)
            .ok_or_else(|| SeedError::UnknownTenant(tenant.to_string()))?;
        let tenant = self.tenant_mut(&tenant_id)?;
        let upn = seed.user_principal_name;
        let (alias, domain) = upn
            .split_once('@')
            .ok_or_else(|| SeedError::Invalid(format!("`{upn}` is not alias@domain")))?;
        if !tenant
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
        {
            return Err(SeedError::Invalid(format!(
                "`{domain}` is not a domain of the tenant"
            )));
        }
        if tenant.user_key(&upn).is_some() {
            return Err(SeedError::Exists(upn));
        }
        let display_name = seed.display_name.unwrap_or_else(|| alias.to_string());
        let mut properties = serde_json::Map::new();
        properties.insert("accountEnabled".into(), json!(true));
        properties.insert("displayName".into(), json!(display_name));
        properties.insert("mailNickname".into(), json!(alias));
        properties.insert("userPrincipalName".into(), json!(upn));
        properties.insert("usageLocation".into(), json!(seed.usage_location));
        let id = guid();
        let mut user = User {
            id: id.clone(),
            upn,
            properties,
            licenses: Vec::new(),
            services_ready_at: None,
            mailbox: None,
            drive: None,
        };
        if let Some(part) = seed.license {
            let sku = tenant
                .skus
                .iter()
                .find(|sku| sku.part_number.eq_ignore_ascii_case(&part))
                .ok_or_else(|| SeedError::Invalid(format!("the tenant has no SKU `{part}`")))?;
            user.licenses.push(sku.sku_id.clone());
            if sku.includes_mailbox {
                user.services_ready_at = Some(now + provisioning_delay);
                user.properties.insert("mail".into(), json!(user.upn));
            }
        }
        tenant.users.insert(id.clone(), user);
        Ok(id)
    }

    /// Returns the failure switched on for this request, if any.
    pub fn failure_for(
        &self,
        tenant: &str,
        client_id: &str,
        user: Option<&User>,
        applies: impl Fn(IdentityFailure) -> bool,
    ) -> Option<IdentityFailure> {
        let domains = self
            .tenants
            .get(tenant)
            .map(|t| t.domains.clone())
            .unwrap_or_default();
        self.failures
            .iter()
            .filter(|rule| applies(rule.failure))
            .find(|rule| {
                let tenant_ok = rule.tenant.as_deref().is_none_or(|t| {
                    t.eq_ignore_ascii_case(tenant)
                        || domains.iter().any(|d| d.eq_ignore_ascii_case(t))
                });
                let client_ok = rule.client_id.as_deref().is_none_or(|c| c == client_id);
                let user_ok = rule.user.as_deref().is_none_or(|wanted| {
                    user.is_some_and(|u| u.id == wanted || u.upn.eq_ignore_ascii_case(wanted))
                });
                tenant_ok && client_ok && user_ok
            })
            .map(|rule| rule.failure)
    }

    /// A unique Teams message id (a millisecond timestamp, as Teams uses).
    pub fn next_chat_message_id(&mut self, now: OffsetDateTime) -> String {
        let millis = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        self.last_message_id = millis.max(self.last_message_id + 1);
        self.last_message_id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world_with_tenant() -> (World, String) {
        let mut world = World::default();
        let id = world
            .seed_tenant(TenantSeed {
                id: None,
                domain: "contoso.onmicrosoft.com".into(),
                display_name: None,
                skus: None,
            })
            .expect("seeds");
        (world, id)
    }

    #[test]
    fn licensed_users_get_a_mailbox_and_drive_only_after_the_delay() {
        let (mut world, tenant) = world_with_tenant();
        let now = clock::now();
        let id = world
            .seed_user(
                &tenant,
                UserSeed {
                    user_principal_name: "adele@contoso.onmicrosoft.com".into(),
                    display_name: None,
                    usage_location: Some("DE".into()),
                    license: Some("enterprisepack".into()),
                },
                now,
                Duration::seconds(60),
            )
            .expect("seeds user");
        let user = world
            .tenants
            .get_mut(&tenant)
            .unwrap()
            .users
            .get_mut(&id)
            .unwrap();
        assert!(!user.services_ready(now));
        assert!(user.mailbox.is_none());
        assert!(user.services_ready(now + Duration::seconds(61)));
        assert!(user.mailbox.as_ref().unwrap().folder("Inbox").is_some());
        assert!(user.drive.is_some());
    }

    #[test]
    fn users_outside_the_tenant_domains_and_duplicates_are_refused() {
        let (mut world, tenant) = world_with_tenant();
        let seed = |upn: &str| UserSeed {
            user_principal_name: upn.into(),
            display_name: None,
            usage_location: None,
            license: None,
        };
        let now = clock::now();
        assert!(world
            .seed_user(&tenant, seed("a@fabrikam.com"), now, Duration::ZERO)
            .is_err());
        world
            .seed_user(
                &tenant,
                seed("a@contoso.onmicrosoft.com"),
                now,
                Duration::ZERO,
            )
            .expect("first");
        assert!(matches!(
            world.seed_user(
                &tenant,
                seed("A@CONTOSO.onmicrosoft.com"),
                now,
                Duration::ZERO
            ),
            Err(SeedError::Exists(_))
        ));
        assert_eq!(world.tenant_id("CONTOSO.onmicrosoft.com"), Some(tenant));
    }

    #[test]
    fn permissions_split_by_resource() {
        assert_eq!(
            split_permission("Mail.Send"),
            Some((Resource::Graph, "Mail.Send".into()))
        );
        assert_eq!(
            split_permission("https://dev.teams.microsoft.com/AppDefinitions.ReadWrite"),
            Some((Resource::DevPortal, "AppDefinitions.ReadWrite".into()))
        );
        assert_eq!(split_permission("https://example.com/x"), None);
    }

    #[test]
    fn chat_message_ids_are_unique_and_increasing() {
        let mut world = World::default();
        let now = clock::now();
        let a: i64 = world.next_chat_message_id(now).parse().unwrap();
        let b: i64 = world.next_chat_message_id(now).parse().unwrap();
        assert!(b > a);
    }
}
