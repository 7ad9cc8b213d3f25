//! The one grammar of Graph resource paths: what a change notification's `resource` (and a
//! subscription's) names, turned into one typed value whatever form Graph wrote it in.
//!
//! Owns no tables. Invariants: every documented form of the same resource parses to the same
//! value: segment names in any case (`Users/{id}/Messages/{id}`, `users/{id}/messages/{id}`),
//! keys as path segments or in OData key syntax (`Users('{id}')/messages('{id}')`, with `''`
//! for a quote inside a key), with or without a leading `/` or a `v1.0/` or `beta/` prefix, a
//! query (`?$select=…`, rich Outlook subscriptions) ignored, keys percent-decoded, and
//! `{user id}@{tenant id}` read as the user id. A path that matches no documented form is
//! `None`, never a guess.
//!
//! Sources (microsoft-graph-docs-contrib): concepts/change-notifications-delivery-webhooks.md
//! (`users/{user_guid}@{tenant_guid}/messages/{id}`, `@odata.id` `Users/…/Messages/…`),
//! concepts/outlook-change-notifications-overview.md (rich: `Users('{id}')/messages('{id}')`),
//! concepts/change-notifications-with-resource-data.md and
//! concepts/teams-changenotifications-chatmessage.md (`chats('…')/messages('…')`,
//! `teams('…')/channels('…')/messages('…')/replies('…')`),
//! concepts/change-notifications-overview.md (`me/drive/root`, `drives/{id}/root`, `users`,
//! `groups`, `communications/presences/{id}`), api-reference/v1.0/api/subscription-post-subscriptions.md
//! (`me/mailfolders('inbox')/messages`, `users/{id}/events`, `sites/{id}/lists/{id}`).

use percent_encoding::percent_decode_str;

pub use super::requests::DriveOwner;

/// A user as a resource path names one: an id, a UPN, or `me` (the signed-in user of a
/// delegated connection).
pub type UserKey = String;

/// What a resource path points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphResource {
    /// One mail message (in any folder).
    Message { user: UserKey, id: String },
    /// One calendar event (in any calendar).
    Event { user: UserKey, id: String },
    /// One contact.
    Contact { user: UserKey, id: String },
    /// One user.
    User { id: UserKey },
    /// One group.
    Group { id: String },
    /// The root of a OneDrive: a user's (`users/{id}/drive/root`, `me/drive/root`) or a drive
    /// by id (`drives/{id}/root`). OneDrive notifies about the root of what was subscribed.
    DriveRoot(DriveOwner),
    /// One message of a Teams chat.
    ChatMessage { chat: String, id: String },
    /// One message of a channel, or a reply to one.
    ChannelMessage {
        team: String,
        channel: String,
        id: String,
        reply: Option<String>,
    },
    /// A Teams chat (membership and properties).
    Chat { id: String },
    /// A team.
    Team { id: String },
    /// A channel.
    Channel { team: String, id: String },
    /// A member of a chat, team or channel.
    Member { parent: String, id: String },
    /// A user's presence.
    Presence { id: String },
    /// A SharePoint list.
    List { site: String, id: String },
    /// A To Do task.
    TodoTask {
        user: UserKey,
        list: String,
        id: String,
    },
    /// A user's mail (a subscription's resource): one folder, or all of it.
    Mail {
        user: UserKey,
        folder: Option<String>,
    },
    /// A user's events (a subscription's resource).
    Events { user: UserKey },
    /// A collection of the directory (`users`, `groups`) or of Teams (`chats/getAllMessages`,
    /// `teams/getAllMessages`, ...): a subscription's resource.
    Collection { name: String },
}

impl GraphResource {
    /// The resource's type, for metrics and reasons (`message`, `chat_message`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            GraphResource::Message { .. } => "message",
            GraphResource::Event { .. } => "event",
            GraphResource::Contact { .. } => "contact",
            GraphResource::User { .. } => "user",
            GraphResource::Group { .. } => "group",
            GraphResource::DriveRoot(_) => "drive_root",
            GraphResource::ChatMessage { .. } => "chat_message",
            GraphResource::ChannelMessage { .. } => "channel_message",
            GraphResource::Chat { .. } => "chat",
            GraphResource::Team { .. } => "team",
            GraphResource::Channel { .. } => "channel",
            GraphResource::Member { .. } => "member",
            GraphResource::Presence { .. } => "presence",
            GraphResource::List { .. } => "list",
            GraphResource::TodoTask { .. } => "todo_task",
            GraphResource::Mail { .. } => "mail",
            GraphResource::Events { .. } => "events",
            GraphResource::Collection { .. } => "collection",
        }
    }

    /// Parses a resource path in any of Graph's documented forms (see the module's note).
    pub fn parse(resource: &str) -> Option<Self> {
        let segments = segments(resource)?;
        let named: Vec<(&str, Option<&str>)> = segments
            .iter()
            .map(|(name, key)| (name.as_str(), key.as_deref()))
            .collect();
        let key = |value: &str| value.to_string();
        Some(match named.as_slice() {
            [("me", None), rest @ ..] => user_scoped("me".into(), rest)?,
            [("users", Some(user)), rest @ ..] => user_scoped(user_id(user), rest)?,
            [("users", None)] => Self::Collection {
                name: "users".into(),
            },
            [("groups", Some(group))] => Self::Group { id: key(group) },
            [("groups", None)] => Self::Collection {
                name: "groups".into(),
            },
            [("drives", Some(drive)), ("root", None)] => {
                Self::DriveRoot(DriveOwner::Drive(key(drive)))
            }
            [("chats", Some(chat))] => Self::Chat { id: key(chat) },
            [("chats", Some(chat)), ("messages", Some(id))] => Self::ChatMessage {
                chat: key(chat),
                id: key(id),
            },
            [("chats", Some(chat)), ("members", Some(id))] => Self::Member {
                parent: key(chat),
                id: key(id),
            },
            [("chats", Some(_)), ("messages", None)]
            | [("chats", None), ..]
            | [("teams", None), ..]
            | [("teams", Some(_)), ("channels", Some(_)), ("messages", None)] => Self::Collection {
                name: resource_path_name(&named),
            },
            [("teams", Some(team))] => Self::Team { id: key(team) },
            [("teams", Some(team)), ("members", Some(id))] => Self::Member {
                parent: key(team),
                id: key(id),
            },
            [("teams", Some(team)), ("channels", Some(channel))] => Self::Channel {
                team: key(team),
                id: key(channel),
            },
            [("teams", Some(_)), ("channels", Some(channel)), ("members", Some(id))] => {
                Self::Member {
                    parent: key(channel),
                    id: key(id),
                }
            }
            [("teams", Some(team)), ("channels", Some(channel)), ("messages", Some(id))] => {
                Self::ChannelMessage {
                    team: key(team),
                    channel: key(channel),
                    id: key(id),
                    reply: None,
                }
            }
            [("teams", Some(team)), ("channels", Some(channel)), ("messages", Some(id)), ("replies", Some(reply))] => {
                Self::ChannelMessage {
                    team: key(team),
                    channel: key(channel),
                    id: key(id),
                    reply: Some(key(reply)),
                }
            }
            [("communications", None), ("presences", Some(id))] => Self::Presence { id: key(id) },
            [("sites", Some(site)), ("lists", Some(id))] => Self::List {
                site: key(site),
                id: key(id),
            },
            _ => return None,
        })
    }
}

/// `chats/getAllMessages` and the like, named by their lower-cased path.
fn resource_path_name(named: &[(&str, Option<&str>)]) -> String {
    named
        .iter()
        .map(|(name, key)| match key {
            Some(_) => format!("{name}/{{id}}"),
            None => (*name).to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// What comes after `users/{id}` or `me`.
fn user_scoped(user: UserKey, rest: &[(&str, Option<&str>)]) -> Option<GraphResource> {
    if user.is_empty() {
        return None;
    }
    let key = |value: &str| value.to_string();
    Some(match rest {
        [] => GraphResource::User { id: user },
        [("messages", Some(id))] => GraphResource::Message { user, id: key(id) },
        [("messages", None)] => GraphResource::Mail { user, folder: None },
        [("drive", None), ("root", None)] => GraphResource::DriveRoot(DriveOwner::User(user)),
        [("events", Some(id))]
        | [("calendar", None), ("events", Some(id))]
        | [("calendars", Some(_)), ("events", Some(id))] => {
            GraphResource::Event { user, id: key(id) }
        }
        [("events", None)] | [("calendar", None), ("events", None)] => {
            GraphResource::Events { user }
        }
        [("contacts", Some(id))] | [("contactfolders", Some(_)), ("contacts", Some(id))] => {
            GraphResource::Contact { user, id: key(id) }
        }
        [("todo", None), ("lists", Some(list)), ("tasks", Some(id))] => GraphResource::TodoTask {
            user,
            list: key(list),
            id: key(id),
        },
        [("chats", Some(chat)), ("messages", Some(id))] => GraphResource::ChatMessage {
            chat: key(chat),
            id: key(id),
        },
        [("chats", _), ..] => GraphResource::Collection {
            name: format!("users/{{id}}/{}", resource_path_name(rest)),
        },
        // Mail in a folder, possibly nested: `mailFolders('Inbox')/childFolders('x')/messages`.
        [("mailfolders", Some(first)), folders @ .., ("messages", message)]
            if folders
                .iter()
                .all(|(name, key)| *name == "childfolders" && key.is_some()) =>
        {
            match message {
                Some(id) => GraphResource::Message { user, id: key(id) },
                None => {
                    let folder = folders.last().and_then(|(_, key)| *key).unwrap_or(first);
                    GraphResource::Mail {
                        user,
                        folder: Some(key(folder)),
                    }
                }
            }
        }
        _ => return None,
    })
}

/// `{user id}@{tenant id}` (Graph's notification form) is the user id; a UPN
/// (`name@domain`) stays whole: its domain is never a GUID.
fn user_id(key: &str) -> UserKey {
    match key.rsplit_once('@') {
        Some((user, tenant)) if is_guid(tenant) && !user.is_empty() => user.to_string(),
        _ => key.to_string(),
    }
}

fn is_guid(value: &str) -> bool {
    value.len() == 36
        && value.char_indices().all(|(n, c)| match n {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Collections whose next plain segment is a key (`users/{id}`); any other plain segment is
/// a name (`drive`, `root`, `calendar`, `me`, `todo`, `communications`).
const KEYED: [&str; 21] = [
    "users",
    "messages",
    "events",
    "contacts",
    "contactfolders",
    "mailfolders",
    "childfolders",
    "calendars",
    "groups",
    "drives",
    "items",
    "chats",
    "teams",
    "channels",
    "replies",
    "members",
    "presences",
    "lists",
    "tasks",
    "sites",
    "conversations",
];

/// The path as (lower-cased name, key) pairs, or `None` when it is not a path at all.
fn segments(resource: &str) -> Option<Vec<(String, Option<String>)>> {
    let parts = split_path(resource)?;
    let mut segments: Vec<(String, Option<String>)> = Vec::with_capacity(parts.len());
    let mut start = 0;
    // `https://graph.microsoft.com/v1.0/...` or `v1.0/...`: relative to the service root.
    if let Some(version) = parts.iter().position(|p| p == "v1.0" || p == "beta") {
        if parts[..version]
            .iter()
            .all(|p| p.contains(':') || p.contains('.') || p.is_empty())
        {
            start = version + 1;
        }
    }
    for part in &parts[start..] {
        if part.is_empty() {
            continue;
        }
        let expects_key =
            matches!(segments.last(), Some((name, None)) if KEYED.contains(&name.as_str()));
        match part.find('(') {
            Some(open) if part.ends_with(')') => {
                let name = part[..open].to_ascii_lowercase();
                let key = odata_key(&part[open + 1..part.len() - 1])?;
                if name.is_empty() || key.is_empty() {
                    return None;
                }
                segments.push((name, Some(key)));
            }
            Some(_) => return None,
            // `chats/getAllMessages`, `teams/getAllMessages`: functions, not keys.
            None if expects_key && !part.to_ascii_lowercase().starts_with("getall") => {
                let key = decode(part)?;
                segments.last_mut().expect("checked above").1 = Some(key);
            }
            None => segments.push((part.to_ascii_lowercase(), None)),
        }
    }
    (!segments.is_empty()).then_some(segments)
}

/// Splits at `/` outside quoted keys, after dropping a query outside them.
fn split_path(resource: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in resource.trim().chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                current.push(c);
            }
            '?' | '#' if !quoted => break,
            '/' if !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if quoted {
        return None;
    }
    parts.push(current);
    Some(parts)
}

/// An OData key: `'quoted'` (with `''` for a quote) or bare; percent-decoded either way.
fn odata_key(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let raw = raw
        .strip_prefix("id=")
        .or_else(|| raw.strip_prefix("ID="))
        .unwrap_or(raw);
    let key = match raw.strip_prefix('\'') {
        Some(inner) => inner.strip_suffix('\'')?.replace("''", "'"),
        None => raw.to_string(),
    };
    decode(&key)
}

fn decode(key: &str) -> Option<String> {
    percent_decode_str(key)
        .decode_utf8()
        .ok()
        .map(|key| key.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";

    fn message(user: &str, id: &str) -> Option<GraphResource> {
        Some(GraphResource::Message {
            user: user.into(),
            id: id.into(),
        })
    }

    #[test]
    fn the_documented_forms_parse() {
        let parse = GraphResource::parse;
        // change-notifications-delivery-webhooks.md: resource and @odata.id.
        assert_eq!(
            parse(&format!("users/u1@{TENANT}/messages/AAMk=")),
            message("u1", "AAMk=")
        );
        assert_eq!(
            parse(&format!("Users/u1@{TENANT}/Messages/AAMk=")),
            message("u1", "AAMk=")
        );
        // outlook-change-notifications-overview.md, rich notifications.
        assert_eq!(
            parse("Users('u1')/messages('AAMk=')"),
            message("u1", "AAMk=")
        );
        assert_eq!(parse("/me/messages/m1"), message("me", "m1"));
        assert_eq!(
            parse("users/u1/mailFolders('Inbox')/messages/m"),
            message("u1", "m")
        );
        assert_eq!(
            parse("users/adele@contoso.com/messages/m"),
            message("adele@contoso.com", "m")
        );
        assert_eq!(
            parse("/users/u1/events/AAMkE"),
            Some(GraphResource::Event {
                user: "u1".into(),
                id: "AAMkE".into()
            })
        );
        assert_eq!(
            parse("Users/8f6bb3b0"),
            Some(GraphResource::User {
                id: "8f6bb3b0".into()
            })
        );
        assert_eq!(
            parse("Groups/g1"),
            Some(GraphResource::Group { id: "g1".into() })
        );
        assert_eq!(
            parse("me/drive/root"),
            Some(GraphResource::DriveRoot(DriveOwner::User("me".into())))
        );
        assert_eq!(
            parse("drives/b!x/root"),
            Some(GraphResource::DriveRoot(DriveOwner::Drive("b!x".into())))
        );
        // teams-changenotifications-chatmessage.md.
        assert_eq!(
            parse("chats('19:8b08@unq.gbl.spaces')/messages('1612289765949')"),
            Some(GraphResource::ChatMessage {
                chat: "19:8b08@unq.gbl.spaces".into(),
                id: "1612289765949".into()
            })
        );
        // change-notifications-with-resource-data.md.
        assert_eq!(
            parse("teams('d29828b8')/channels('19:f127@thread.skype')/messages('1565045424600')/replies('1565047490246')"),
            Some(GraphResource::ChannelMessage {
                team: "d29828b8".into(),
                channel: "19:f127@thread.skype".into(),
                id: "1565045424600".into(),
                reply: Some("1565047490246".into())
            })
        );
        assert_eq!(
            parse("communications/presences/p1"),
            Some(GraphResource::Presence { id: "p1".into() })
        );
        // Subscription resources (subscription-post-subscriptions.md).
        assert_eq!(
            parse("/me/mailfolders('inbox')/messages?$select=subject"),
            Some(GraphResource::Mail {
                user: "me".into(),
                folder: Some("inbox".into())
            })
        );
        assert_eq!(
            parse("Users/u1/Messages"),
            Some(GraphResource::Mail {
                user: "u1".into(),
                folder: None
            })
        );
        assert_eq!(
            parse("chats/getAllMessages").map(|r| r.kind()),
            Some("collection")
        );
    }

    #[test]
    fn keys_are_decoded() {
        assert_eq!(
            GraphResource::parse("chats/19%3Aabc%40thread.v2/messages/1"),
            Some(GraphResource::ChatMessage {
                chat: "19:abc@thread.v2".into(),
                id: "1".into()
            })
        );
        assert_eq!(
            GraphResource::parse("users('o''neil@contoso.com')"),
            Some(GraphResource::User {
                id: "o'neil@contoso.com".into()
            })
        );
    }

    #[test]
    fn paths_that_match_no_documented_form_are_not_guessed() {
        for path in [
            "",
            "/",
            "users/u1/unknownThing/x",
            "drives/d/items/i",
            "users('u1",
            "users(u1)x/messages",
            "foo/bar",
            "users/u1/mailFolders('Inbox')/events/e",
        ] {
            assert_eq!(GraphResource::parse(path), None, "{path}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Characters Graph's ids are made of: base64 (Outlook, with `=`, `-`, `_`), GUIDs,
    /// Teams thread ids (`19:…@thread.v2`), drive ids (`b!…`), UPNs (`.`).
    fn id() -> impl Strategy<Value = String> {
        let chars: Vec<char> =
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789=-_:@.!"
                .chars()
                .collect();
        proptest::collection::vec(proptest::sample::select(chars), 1..48)
            .prop_map(|chars| chars.into_iter().collect::<String>())
            // A bare `me` is the signed-in user, not an id; `{x}@{GUID}` is read as `x`.
            .prop_filter("not a keyword", |id| !id.eq_ignore_ascii_case("me"))
    }

    fn guid() -> impl Strategy<Value = String> {
        any::<u128>().prop_map(|n| {
            let hex = format!("{n:032x}");
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        })
    }

    /// A segment name in one of the cases Graph writes it.
    fn cased(name: &'static str, style: u8) -> String {
        match style % 3 {
            0 => name.to_string(),
            1 => name.to_ascii_lowercase(),
            _ => {
                let mut chars = name.chars();
                let first = chars.next().expect("names are not empty");
                first.to_ascii_uppercase().to_string() + chars.as_str()
            }
        }
    }

    /// `name/key`, `name('key')` or `name('key')` with the key percent-encoded.
    fn keyed(name: &'static str, key: &str, form: u8, style: u8) -> String {
        let name = cased(name, style);
        match form % 3 {
            0 => format!("{name}/{key}"),
            1 => format!("{name}('{}')", key.replace('\'', "''")),
            _ => format!(
                "{name}('{}')",
                percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC)
            ),
        }
    }

    fn lead(slash: bool) -> &'static str {
        if slash {
            "/"
        } else {
            ""
        }
    }

    proptest! {
        #[test]
        fn every_form_of_a_message_parses_to_one_value(
            user in id(), message in id(), tenant in guid(), folder in id(),
            forms in any::<[u8; 3]>(), styles in any::<[u8; 3]>(), slash in any::<bool>(),
            with_tenant in any::<bool>(), in_folder in any::<bool>(),
        ) {
            // A user key `{x}@{GUID}` means x: skip ids that already end that way.
            prop_assume!(GraphResource::parse(&format!("users/{user}")) == Some(GraphResource::User { id: user.clone() }));
            let user_key = if with_tenant { format!("{user}@{tenant}") } else { user.clone() };
            let mut path = format!("{}{}", lead(slash), keyed("users", &user_key, forms[0], styles[0]));
            if in_folder {
                path = format!("{path}/{}", keyed("mailFolders", &folder, forms[2], styles[2]));
            }
            path = format!("{path}/{}", keyed("messages", &message, forms[1], styles[1]));
            prop_assert_eq!(
                GraphResource::parse(&path),
                Some(GraphResource::Message { user, id: message }),
                "{}", path
            );
        }

        #[test]
        fn every_form_of_an_event_parses_to_one_value(
            user in id(), event in id(), forms in any::<[u8; 2]>(),
            styles in any::<[u8; 3]>(), slash in any::<bool>(), in_calendar in any::<bool>(),
        ) {
            prop_assume!(GraphResource::parse(&format!("users/{user}")) == Some(GraphResource::User { id: user.clone() }));
            let calendar = if in_calendar { format!("{}/", cased("calendar", styles[2])) } else { String::new() };
            let path = format!(
                "{}{}/{calendar}{}",
                lead(slash),
                keyed("users", &user, forms[0], styles[0]),
                keyed("events", &event, forms[1], styles[1])
            );
            prop_assert_eq!(
                GraphResource::parse(&path),
                Some(GraphResource::Event { user, id: event }),
                "{}", path
            );
        }

        #[test]
        fn every_form_of_a_chat_or_channel_message_parses_to_one_value(
            team in id(), channel in id(), message in id(), reply in proptest::option::of(id()),
            forms in any::<[u8; 4]>(), styles in any::<[u8; 4]>(), slash in any::<bool>(),
        ) {
            let mut path = format!(
                "{}{}/{}/{}",
                lead(slash),
                keyed("teams", &team, forms[0], styles[0]),
                keyed("channels", &channel, forms[1], styles[1]),
                keyed("messages", &message, forms[2], styles[2])
            );
            if let Some(reply) = &reply {
                path = format!("{path}/{}", keyed("replies", reply, forms[3], styles[3]));
            }
            prop_assert_eq!(
                GraphResource::parse(&path),
                Some(GraphResource::ChannelMessage { team: team.clone(), channel: channel.clone(), id: message.clone(), reply }),
                "{}", path
            );
            let chat_path = format!(
                "{}{}/{}",
                lead(slash),
                keyed("chats", &channel, forms[0], styles[0]),
                keyed("messages", &message, forms[1], styles[1])
            );
            prop_assert_eq!(
                GraphResource::parse(&chat_path),
                Some(GraphResource::ChatMessage { chat: channel, id: message }),
                "{}", chat_path
            );
        }

        #[test]
        fn every_form_of_a_drive_root_user_or_group_parses_to_one_value(
            owner in id(), forms in any::<[u8; 2]>(), styles in any::<[u8; 4]>(), slash in any::<bool>(),
        ) {
            prop_assume!(GraphResource::parse(&format!("users/{owner}")) == Some(GraphResource::User { id: owner.clone() }));
            let drive = format!("{}{}/{}", lead(slash), keyed("drives", &owner, forms[0], styles[0]), cased("root", styles[1]));
            prop_assert_eq!(GraphResource::parse(&drive), Some(GraphResource::DriveRoot(DriveOwner::Drive(owner.clone()))), "{}", drive);
            let user_drive = format!(
                "{}{}/{}/{}",
                lead(slash),
                keyed("users", &owner, forms[1], styles[2]),
                cased("drive", styles[3]),
                cased("root", styles[1])
            );
            prop_assert_eq!(GraphResource::parse(&user_drive), Some(GraphResource::DriveRoot(DriveOwner::User(owner.clone()))), "{}", user_drive);
            let user = format!("{}{}", lead(slash), keyed("users", &owner, forms[1], styles[2]));
            prop_assert_eq!(GraphResource::parse(&user), Some(GraphResource::User { id: owner.clone() }), "{}", user);
            let group = format!("{}{}", lead(slash), keyed("groups", &owner, forms[0], styles[0]));
            prop_assert_eq!(GraphResource::parse(&group), Some(GraphResource::Group { id: owner }), "{}", group);
        }
    }
}
