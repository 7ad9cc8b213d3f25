//! `heartbeat_run`: one run of a tenant's heartbeat scenario. Makes sure the demo users exist
//! (looked up by userPrincipalName, never duplicated), have a usage location and the scenario's
//! license (seats checked in `subscribedSkus` first), then creates the run's activity among
//! them with seeded content: mail in the recipient's Inbox (created non-draft through
//! PR_MESSAGE_FLAGS, app-only), documents in OneDrive (simple upload; every fourth a data
//! export above the simple-upload size, through an upload session), calendar events (every
//! third updated, every third cancelled); Teams chat needs delegated access and is skipped with
//! `delegated_access_required` otherwise. With a delegated connection (a staff user), mail is
//! really sent by that user to the demo users and chat messages go to their one-on-one chats.
//! Every object is recorded in `provisioned_objects` with who Graph says made it.
//!
//! Resumable: the run's id is fixed in the payload, each step is recorded after Graph created
//! its object, and a retried run skips recorded steps. An object created but not recorded (the
//! attempt stopped in between) is found, not made twice: planted mail carries its step in an
//! extended property, uploads replace the same path, events carry a `transactionId`, users are
//! looked up by UPN. A mailbox or drive Graph has not provisioned yet (after licensing) sends
//! the run back to the queue (`services_not_ready`) instead of sleeping.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Job, JobContext, JobError};
use crate::config::{ActivityConfig, ActivityKind, DemoUsersConfig};
use crate::graph::GraphError;
use crate::heartbeat::{self, Content, NewObject};
use crate::metrics::names;
use crate::runs;
use crate::vault::connections::{self, AuthMode, Connection, Status};

/// Run a tenant's heartbeat scenario once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRun {
    /// Entra tenant ID.
    pub tenant_id: String,
    /// This run's id in `provisioned_objects` (fixed when enqueued, so retries resume it).
    pub heartbeat_id: String,
    /// The demo users.
    pub users: DemoUsersConfig,
    /// What the run creates.
    pub activities: Vec<ActivityConfig>,
    /// Content seed.
    pub seed: u64,
    /// The operation run this job reports to (`heartbeat run-now`).
    #[serde(default)]
    pub run_id: Option<String>,
}

impl HeartbeatRun {
    /// A new run of `scenario` with a fresh run id.
    pub fn new(scenario: &crate::config::HeartbeatConfig) -> Self {
        Self {
            tenant_id: scenario.tenant.trim().to_ascii_lowercase(),
            heartbeat_id: uuid::Uuid::now_v7().simple().to_string(),
            users: scenario.users.clone(),
            activities: scenario.activities.clone(),
            seed: scenario.seed,
            run_id: None,
        }
    }
}

/// A demo user as the run uses it.
#[derive(Debug, Clone)]
struct DemoUser {
    id: String,
    upn: String,
    first_name: String,
}

/// The named MAPI property on planted messages that says which run step made them (a custom
/// property set: tenantd's own GUID), so a resumed run finds a message an interrupted attempt
/// created but did not record.
const STEP_PROPERTY: &str =
    "String {6d1b3f0a-2c4e-4f7a-9b8d-5e0c1a2b3c4d} Name tenantdHeartbeatStep";

/// Size of the data exports (every fourth file): above Graph's simple-upload switch.
const LARGE_FILE_BYTES: usize = crate::graph::requests::SIMPLE_UPLOAD_MAX + 1024 * 1024;

/// Wait before retrying a run whose new users' mailboxes or drives are not there yet.
const SERVICES_RETRY: Duration = Duration::from_secs(30);

fn services_not_ready(what: &str) -> JobError {
    JobError::Retry {
        reason: "services_not_ready",
        message: format!("{what} is not provisioned yet (Graph provisions it after licensing)"),
        after: Some(SERVICES_RETRY),
    }
}

/// A Graph failure on a demo user's mailbox or drive, with access-policy denials naming it.
fn graph_failure(err: GraphError, owner: &str, what: &str) -> JobError {
    match &err {
        GraphError::NotFound { code }
            if code == "MailboxNotEnabledForRESTAPI" || code == "ResourceNotFound" =>
        {
            services_not_ready(&format!("{what} of {owner}"))
        }
        GraphError::Forbidden {
            access_policy: true,
            ..
        } => JobError::Permanent {
            reason: "access_policy_denied",
            message: format!(
                "an Exchange application access policy or RBAC for Applications denies this app the mailbox of {owner}"
            ),
        },
        _ => JobError::from(err),
    }
}

fn failed(reason: &'static str, message: String) -> JobError {
    JobError::Permanent { reason, message }
}

/// Who Graph says made an object: a driveItem's `createdBy`, a message's `sender`/`from`, an
/// event's `organizer`.
fn attribution(object: &Value) -> Option<String> {
    if let Some(app) = object["createdBy"]["application"]["id"].as_str() {
        return Some(format!("application:{app}"));
    }
    // A chatMessage's sender.
    if let Some(user) = object["from"]["user"]["id"].as_str() {
        return Some(format!("user:{user}"));
    }
    let address = [
        &object["createdBy"]["user"]["email"],
        &object["sender"]["emailAddress"]["address"],
        &object["from"]["emailAddress"]["address"],
        &object["organizer"]["emailAddress"]["address"],
    ]
    .into_iter()
    .find_map(Value::as_str)?;
    Some(format!("user:{address}"))
}

struct Run<'a> {
    job: &'a HeartbeatRun,
    context: &'a JobContext,
    app: Connection,
    done: HashSet<String>,
    /// An earlier attempt of this run got somewhere: look for unrecorded objects first.
    resuming: bool,
    created: Vec<&'static str>,
}

impl Run<'_> {
    /// A step's name within this run: its content stream, its extended-property marker and its
    /// event `transactionId`.
    fn marker(&self, step: &str) -> String {
        format!("{}:{step}", self.job.heartbeat_id)
    }

    async fn record(
        &mut self,
        step: &str,
        kind: &'static str,
        graph_id: &str,
        owner: &str,
        attributed_to: Option<&str>,
    ) -> Result<(), JobError> {
        heartbeat::record(
            &self.context.store,
            &NewObject {
                tenant_id: &self.job.tenant_id,
                run_id: &self.job.heartbeat_id,
                step,
                kind,
                graph_id,
                owner,
                attributed_to,
            },
        )
        .await
        .map_err(JobError::database)?;
        metrics::counter!(names::HEARTBEAT_OBJECTS, "kind" => kind).increment(1);
        self.done.insert(step.to_string());
        self.created.push(kind);
        Ok(())
    }

    /// The demo users, created, located and licensed as the scenario says.
    async fn users(&mut self) -> Result<Vec<DemoUser>, JobError> {
        let config = self.job.users.clone();
        // The tenant's SKUs, read once and again after each assignment (its seat count moved).
        let mut skus: Option<Vec<Value>> = None;
        let mut users = Vec::new();
        for n in 1..=config.count {
            let nickname = format!("{}{n:02}", config.prefix);
            let upn = format!("{nickname}@{}", config.domain);
            let user = self.existing_or_new_user(&config, &nickname, &upn).await?;
            let id = user["id"].as_str().unwrap_or_default().to_string();
            if id.is_empty() {
                return Err(failed(
                    "graph_answer_invalid",
                    format!("Graph returned {upn} without an id"),
                ));
            }
            let located = user["usageLocation"].as_str().is_some_and(|l| l.len() == 2);
            if !located {
                // Graph refuses a license to a user without one.
                self.context
                    .graph
                    .update_user(
                        &self.app,
                        &id,
                        &json!({"usageLocation": config.usage_location}),
                    )
                    .await
                    .map_err(JobError::from)?;
            }
            if let Some(part_number) = &config.license_sku {
                self.licensed(&user, &id, &upn, part_number, &mut skus)
                    .await?;
            }
            let first_name = user["givenName"]
                .as_str()
                .or_else(|| user["displayName"].as_str())
                .unwrap_or(&nickname)
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_string();
            users.push(DemoUser {
                id,
                upn,
                first_name,
            });
        }
        Ok(users)
    }

    /// The demo user `upn` as Graph has it, created (and recorded) when it is not there.
    async fn existing_or_new_user(
        &mut self,
        config: &DemoUsersConfig,
        nickname: &str,
        upn: &str,
    ) -> Result<Value, JobError> {
        let graph = &self.context.graph;
        let found = graph
            .find_user(
                &self.app,
                upn,
                Some("id,userPrincipalName,displayName,givenName,usageLocation,assignedLicenses"),
            )
            .await
            .map_err(JobError::from)?;
        if let Some(user) = found {
            return Ok(user);
        }
        let name = Content::new(self.job.seed, &format!("user:{upn}")).person();
        let given = name.split(' ').next().unwrap_or(&name).to_string();
        let body = json!({
            "accountEnabled": true,
            "displayName": name,
            "givenName": given,
            "mailNickname": nickname,
            "userPrincipalName": upn,
            "usageLocation": config.usage_location,
            "passwordProfile": {
                "forceChangePasswordNextSignIn": true,
                // Nobody signs in as a demo user; the password is never kept.
                "password": format!("{}Aa1!", uuid::Uuid::new_v4().simple()),
            },
        });
        let created = graph
            .create_user(&self.app, &body)
            .await
            .map_err(JobError::from)?;
        let id = created["id"].as_str().unwrap_or_default().to_string();
        self.record(&format!("user:{upn}"), "user", &id, upn, None)
            .await?;
        Ok(
            json!({"id": id, "userPrincipalName": upn, "givenName": given,
                  "usageLocation": config.usage_location, "assignedLicenses": []}),
        )
    }

    /// `user` holds a license of SKU `part_number`: assigned (and recorded) when it does not,
    /// refused with a reason when the tenant has no such SKU or no seat left.
    async fn licensed(
        &mut self,
        user: &Value,
        id: &str,
        upn: &str,
        part_number: &str,
        skus: &mut Option<Vec<Value>>,
    ) -> Result<(), JobError> {
        let graph = &self.context.graph;
        if skus.is_none() {
            *skus = Some(
                graph
                    .subscribed_skus(&self.app)
                    .await
                    .map_err(JobError::from)?,
            );
        }
        let sku = skus
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|sku| {
                sku["skuPartNumber"]
                    .as_str()
                    .is_some_and(|p| p.eq_ignore_ascii_case(part_number))
            })
            .cloned()
            .ok_or_else(|| {
                failed(
                    "license_sku_unknown",
                    format!("the tenant has no subscription for SKU {part_number}"),
                )
            })?;
        let sku_id = sku["skuId"].as_str().unwrap_or_default().to_string();
        let assigned = user["assignedLicenses"].as_array().is_some_and(|list| {
            list.iter().any(|l| {
                l["skuId"]
                    .as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case(&sku_id))
            })
        });
        if assigned {
            return Ok(());
        }
        let seats = sku["prepaidUnits"]["enabled"].as_i64().unwrap_or(0);
        let consumed = sku["consumedUnits"].as_i64().unwrap_or(0);
        if consumed >= seats {
            return Err(failed(
                "license_seats_exhausted",
                format!("no {part_number} seats left ({consumed} of {seats} used) for {upn}"),
            ));
        }
        graph
            .assign_license(&self.app, id, &sku_id)
            .await
            .map_err(JobError::from)?;
        // The cached count is now one short; a later user re-reads it.
        *skus = None;
        self.record(&format!("license:{upn}"), "license", &sku_id, id, None)
            .await
    }

    async fn mail(&mut self, step: &str, from: &DemoUser, to: &DemoUser) -> Result<(), JobError> {
        let graph = &self.context.graph;
        let marker = self.marker(step);
        if self.resuming {
            // An earlier attempt may have created it and stopped before recording it.
            let found = graph
                .message_by_property(&self.app, &to.id, STEP_PROPERTY, &marker)
                .await
                .map_err(|err| graph_failure(err, &to.upn, "the mailbox"))?;
            if let Some(found) = found {
                let id = found["id"].as_str().unwrap_or_default().to_string();
                return self
                    .record(step, "mail", &id, &to.id, attribution(&found).as_deref())
                    .await;
            }
        }
        let mut content = Content::new(self.job.seed, &marker);
        let subject = content.subject();
        let message = json!({
            "subject": subject,
            "body": {"contentType": "text", "content": content.mail_body(&to.first_name)},
            "from": {"emailAddress": {"address": from.upn}},
            "toRecipients": [{"emailAddress": {"address": to.upn}}],
            // PR_MESSAGE_FLAGS without mfUnsent: a received message, not a draft; and the step
            // that made it, so a resumed run finds it.
            "singleValueExtendedProperties": [
                {"id": "Integer 0x0E07", "value": "1"},
                {"id": STEP_PROPERTY, "value": marker},
            ],
        });
        let created = graph
            .create_message(&self.app, &to.id, "inbox", &message)
            .await
            .map_err(|err| graph_failure(err, &to.upn, "the mailbox"))?;
        let id = created["id"].as_str().unwrap_or_default().to_string();
        // Read back: who Graph says sent it.
        let read = graph
            .get_message(&self.app, &to.id, &id, "from,sender,isDraft")
            .await
            .map_err(|err| graph_failure(err, &to.upn, "the mailbox"))?;
        self.record(step, "mail", &id, &to.id, attribution(&read).as_deref())
            .await
    }

    /// Mail really sent by the delegated staff user to a demo user (draft, then send: unlike
    /// `sendMail` the draft tells the message's internetMessageId, which finds its copies).
    /// Both copies are recorded (`sent_mail`: graph id = internetMessageId, owner = mailbox),
    /// right after the send. The draft carries its step, so a resumed run sends a draft an
    /// earlier attempt left, and does not send again what that attempt sent unrecorded.
    async fn sent_mail(
        &mut self,
        step: &str,
        staff: &Connection,
        to: &DemoUser,
    ) -> Result<(), JobError> {
        let graph = &self.context.graph;
        let me = staff.user_id.clone();
        let staff_name = staff.user_name.clone().unwrap_or_else(|| me.clone());
        let marker = self.marker(step);
        // An earlier attempt may have made the draft, or even sent it, without recording it.
        let earlier = if self.resuming {
            graph
                .message_by_property(staff, &me, STEP_PROPERTY, &marker)
                .await
                .map_err(|err| graph_failure(err, &staff_name, "the mailbox"))?
        } else {
            None
        };
        let draft = match earlier {
            Some(found) => found,
            None => {
                let mut content = Content::new(self.job.seed, &marker);
                let message = json!({
                    "subject": content.subject(),
                    "body": {"contentType": "text", "content": content.mail_body(&to.first_name)},
                    "toRecipients": [{"emailAddress": {"address": to.upn}}],
                    "singleValueExtendedProperties": [{"id": STEP_PROPERTY, "value": marker}],
                });
                graph
                    .create_draft(staff, &me, &message)
                    .await
                    .map_err(|err| graph_failure(err, &staff_name, "the mailbox"))?
            }
        };
        let (Some(id), Some(internet_id)) = (
            draft["id"].as_str().map(str::to_string),
            draft["internetMessageId"].as_str().map(str::to_string),
        ) else {
            return Err(failed(
                "graph_answer_invalid",
                "Graph's draft has no id or internetMessageId".into(),
            ));
        };
        // A message found in Sent Items was sent already.
        if draft["isDraft"] != json!(false) {
            graph
                .send_draft(staff, &me, &id)
                .await
                .map_err(|err| graph_failure(err, &staff_name, "the mailbox"))?;
        }
        // Who Graph says sent it, from the recipient's copy when it has arrived already.
        let copies = graph
            .messages_by_internet_id(&self.app, &to.id, &internet_id)
            .await
            .unwrap_or_default();
        let attributed = copies.first().and_then(attribution);
        self.record(
            &format!("{step}:sent"),
            "sent_mail",
            &internet_id,
            &me,
            attributed.as_deref(),
        )
        .await?;
        self.record(
            step,
            "sent_mail",
            &internet_id,
            &to.id,
            attributed.as_deref(),
        )
        .await
    }

    /// A Teams chat message from the delegated staff user to a demo user in their one-on-one
    /// chat (Graph allows chat posts only with delegated access, outside imports).
    async fn chat(
        &mut self,
        step: &str,
        staff: &Connection,
        with: &DemoUser,
    ) -> Result<(), JobError> {
        let mut content = Content::new(self.job.seed, &self.marker(step));
        let graph = &self.context.graph;
        let chat = graph
            .one_on_one_chat(staff, &staff.user_id, &with.id)
            .await
            .map_err(JobError::from)?;
        let chat_id = chat["id"].as_str().unwrap_or_default().to_string();
        let message = graph
            .post_chat_message(staff, &chat_id, &content.chat_line())
            .await
            .map_err(JobError::from)?;
        let id = message["id"].as_str().unwrap_or_default().to_string();
        self.record(
            step,
            "chat",
            &id,
            &chat_id,
            attribution(&message).as_deref(),
        )
        .await
    }

    async fn file(&mut self, step: &str, number: usize, owner: &DemoUser) -> Result<(), JobError> {
        let mut content = Content::new(self.job.seed, &self.marker(step));
        // Every fourth file is a data export above the simple-upload size (an upload session).
        let (name, text, content_type) = if number % 4 == 3 {
            let (name, csv) = content.data_export(number, LARGE_FILE_BYTES);
            (name, csv, "text/csv")
        } else {
            let (name, text) = content.document(number);
            (name, text, "text/plain")
        };
        // The same path on a resumed run (the upload replaces, never duplicates), another for
        // every other run: the whole run id, whose first characters are only its minute.
        let path = format!("Heartbeat/{}-{name}", self.job.heartbeat_id);
        let item = self
            .context
            .graph
            .upload_file(&self.app, &owner.id, &path, text.into_bytes(), content_type)
            .await
            .map_err(|err| graph_failure(err, &owner.upn, "the OneDrive"))?;
        let id = item["id"].as_str().unwrap_or_default().to_string();
        self.record(step, "file", &id, &owner.id, attribution(&item).as_deref())
            .await
    }

    async fn event(
        &mut self,
        step: &str,
        number: usize,
        organizer: &DemoUser,
        attendee: &DemoUser,
    ) -> Result<(), JobError> {
        let mut content = Content::new(self.job.seed, &self.marker(step));
        let subject = content.subject();
        let day = 1 + content.below(10);
        let hour = 8 + content.below(9);
        let start = (chrono::Utc::now().date_naive() + chrono::Days::new(day as u64))
            .and_hms_opt(u32::try_from(hour).unwrap_or(9), 0, 0)
            .unwrap_or_default();
        let end = start + chrono::Duration::minutes(30);
        let format = |at: chrono::NaiveDateTime| at.format("%Y-%m-%dT%H:%M:%S").to_string();
        let event = json!({
            "subject": subject,
            "body": {"contentType": "text", "content": content.mail_body(&attendee.first_name)},
            "start": {"dateTime": format(start), "timeZone": "UTC"},
            "end": {"dateTime": format(end), "timeZone": "UTC"},
            "attendees": [{"emailAddress": {"address": attendee.upn}, "type": "required"}],
            // Graph's idempotency key for event creation.
            "transactionId": self.marker(step),
        });
        let graph = &self.context.graph;
        let created = graph
            .create_event(&self.app, &organizer.id, &event)
            .await
            .map_err(|err| graph_failure(err, &organizer.upn, "the calendar"))?;
        let id = created["id"].as_str().unwrap_or_default().to_string();
        self.record(
            step,
            "event",
            &id,
            &organizer.id,
            attribution(&created).as_deref(),
        )
        .await?;
        match number % 3 {
            1 => {
                let moved = start + chrono::Duration::hours(1);
                let changes = json!({
                    "subject": format!("{subject} (moved)"),
                    "start": {"dateTime": format(moved), "timeZone": "UTC"},
                    "end": {"dateTime": format(moved + chrono::Duration::minutes(30)), "timeZone": "UTC"},
                });
                graph
                    .update_event(&self.app, &organizer.id, &id, &changes)
                    .await
                    .map_err(|err| graph_failure(err, &organizer.upn, "the calendar"))?;
            }
            2 => graph
                .cancel_event(
                    &self.app,
                    &organizer.id,
                    &id,
                    "Sorry, we need to skip this one.",
                )
                .await
                .map_err(|err| graph_failure(err, &organizer.upn, "the calendar"))?,
            _ => {}
        }
        Ok(())
    }
}

/// The delegated connection of the tenant that can act, if any.
pub(super) async fn delegated(
    context: &JobContext,
    tenant_id: &str,
) -> Result<Option<Connection>, JobError> {
    let list = connections::list(&context.store, Some(tenant_id))
        .await
        .map_err(JobError::database)?;
    Ok(list
        .into_iter()
        .find(|c| c.auth_mode == AuthMode::Delegated && c.status == Status::Active))
}

async fn provision(job: &HeartbeatRun, context: &JobContext) -> Result<String, JobError> {
    let app = connections::default_app(&context.store, &job.tenant_id)
        .await
        .map_err(|_| {
            failed(
                "no_app_connection",
                "the tenant has no usable app connection; add one with `tenantd tenant add`".into(),
            )
        })?;
    let done: HashSet<String> =
        heartbeat::run_steps(&context.store, &job.tenant_id, &job.heartbeat_id)
            .await
            .map_err(JobError::database)?
            .into_iter()
            .map(|object| object.step)
            .collect();
    let delegated = delegated(context, &job.tenant_id).await?;
    let resuming = context.attempt > 1 || !done.is_empty();
    let mut run = Run {
        job,
        context,
        app,
        done,
        resuming,
        created: Vec::new(),
    };
    let users = run.users().await?;
    let mut skipped = Vec::new();
    for activity in &job.activities {
        let kind = activity.kind;
        for number in 0..usize::try_from(activity.per_run).unwrap_or(0) {
            let step = format!("{}:{number}", kind.as_str());
            if run.done.contains(&step) {
                continue;
            }
            let mut pick = Content::new(job.seed, &format!("{}:{step}:users", job.heartbeat_id));
            let first = pick.below(users.len());
            let second = if users.len() > 1 {
                (first + 1 + pick.below(users.len() - 1)) % users.len()
            } else {
                first
            };
            let (one, other) = (&users[first], &users[second]);
            match (kind, &delegated) {
                (ActivityKind::Mail, Some(staff)) => run.sent_mail(&step, staff, other).await?,
                (ActivityKind::Mail, None) => run.mail(&step, one, other).await?,
                (ActivityKind::File, _) => run.file(&step, number, one).await?,
                (ActivityKind::Event, _) => run.event(&step, number, one, other).await?,
                (ActivityKind::Chat, Some(staff)) => run.chat(&step, staff, one).await?,
                (ActivityKind::Chat, None) => {
                    // Graph takes chat posts only with delegated access: reported, not failed.
                    metrics::counter!(names::HEARTBEAT_SKIPPED, "kind" => kind.as_str(), "reason" => "delegated_access_required").increment(1);
                    skipped.push(format!("{}: delegated_access_required", kind.as_str()));
                    break;
                }
            }
        }
    }
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for kind in &run.created {
        match counts.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind, 1)),
        }
    }
    let created: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    Ok(format!(
        "{} demo users ready; created: {}; skipped: {}",
        users.len(),
        if created.is_empty() {
            "nothing".into()
        } else {
            created.join(", ")
        },
        if skipped.is_empty() {
            "nothing".into()
        } else {
            skipped.join(", ")
        },
    ))
}

impl Job for HeartbeatRun {
    const KIND: &'static str = "heartbeat_run";
    const MAX_ATTEMPTS: u32 = 20;
    const TIMEOUT: Duration = Duration::from_secs(600);

    fn dedupe_key(&self) -> Option<String> {
        Some(self.heartbeat_id.clone())
    }

    fn tenant(&self) -> Option<String> {
        Some(self.tenant_id.clone())
    }

    async fn run(self, context: JobContext) -> Result<(), JobError> {
        if let Some(run_id) = &self.run_id {
            runs::mark_running(&context.store, run_id)
                .await
                .map_err(JobError::database)?;
        }
        let outcome = provision(&self, &context).await;
        let (result, finish) = match &outcome {
            Ok(report) => ("succeeded", Some((true, "ok", report.clone()))),
            Err(JobError::Retry { .. }) => ("retried", None),
            Err(JobError::Permanent { reason, message }) => {
                metrics::counter!(names::HEARTBEAT_FAILURES, "reason" => *reason).increment(1);
                ("failed", Some((false, *reason, message.clone())))
            }
        };
        metrics::counter!(names::HEARTBEAT_RUNS, "result" => result).increment(1);
        if let (Some(run_id), Some((ok, reason, message))) = (&self.run_id, finish) {
            runs::finish(&context.store, run_id, ok, reason, &message)
                .await
                .map_err(JobError::database)?;
        }
        outcome.map(|report| tracing::info!(tenant = %self.tenant_id, run = %self.heartbeat_id, %report, "heartbeat run finished"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribution_reads_graphs_fields() {
        assert_eq!(
            attribution(
                &json!({"createdBy": {"application": {"id": "app-1", "displayName": "tenantd"}}})
            ),
            Some("application:app-1".into())
        );
        assert_eq!(
            attribution(&json!({"sender": {"emailAddress": {"address": "demo01@contoso.com"}}})),
            Some("user:demo01@contoso.com".into())
        );
        assert_eq!(
            attribution(&json!({"organizer": {"emailAddress": {"address": "demo02@contoso.com"}}})),
            Some("user:demo02@contoso.com".into())
        );
        assert_eq!(attribution(&json!({"id": "x"})), None);
    }
}
