//! Heartbeat provisioning's record and content: every object a heartbeat run created in a
//! tenant (so cleanup removes exactly that, and a resumed run skips the steps it finished), and
//! the seeded, embedded corpus demo content is drawn from (names, subjects, texts), so the same
//! seed and run give the same content.
//!
//! Owns `provisioned_objects`. Invariants: a step of a run is recorded at most once (unique
//! tenant, run, step), recorded only after Graph created its object; a removed object keeps its
//! row with `removed_at` set, so cleanup never touches an object twice and never one tenantd
//! did not create.

use serde::Serialize;

use crate::clock::now_unix;
use crate::store::{with_pool, write_tx, Store, StoreError};

/// One created object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProvisionedObject {
    /// Row id.
    pub id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The heartbeat run that created it.
    pub run_id: String,
    /// The run's step that created it, e.g. `user:demo01@contoso.onmicrosoft.com`, `mail:3`.
    pub step: String,
    /// `user`, `license`, `mail`, `file`, `event` or `chat`.
    pub kind: String,
    /// Graph's id (for a license, the SKU id).
    pub graph_id: String,
    /// The user whose mailbox, drive or calendar holds it (for a license, its user).
    pub owner: String,
    /// Who Graph says did it: `application:<app id>` or `user:<address>`.
    pub attributed_to: Option<String>,
    /// Created (Unix seconds).
    pub created_at: i64,
    /// Removed by cleanup (Unix seconds).
    pub removed_at: Option<i64>,
}

/// A new record, before it is written.
#[derive(Debug, Clone)]
pub struct NewObject<'a> {
    /// The tenant.
    pub tenant_id: &'a str,
    /// The run.
    pub run_id: &'a str,
    /// The step.
    pub step: &'a str,
    /// The kind.
    pub kind: &'a str,
    /// Graph's id.
    pub graph_id: &'a str,
    /// Holder of the object.
    pub owner: &'a str,
    /// Who Graph says did it.
    pub attributed_to: Option<&'a str>,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
);

fn object(row: Row) -> ProvisionedObject {
    let (id, tenant_id, run_id, step, kind, graph_id, owner, attributed_to, created_at, removed_at) =
        row;
    ProvisionedObject {
        id,
        tenant_id,
        run_id,
        step,
        kind,
        graph_id,
        owner,
        attributed_to,
        created_at,
        removed_at,
    }
}

macro_rules! select_objects {
    ($tail:literal) => {
        concat!(
            "SELECT id, tenant_id, run_id, step, kind, graph_id, owner, attributed_to, created_at, removed_at FROM provisioned_objects ",
            $tail
        )
    };
}

/// Records `new` (a step already recorded is left as it is).
///
/// # Errors
/// The database failed.
pub async fn record(store: &Store, new: &NewObject<'_>) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO provisioned_objects (id, tenant_id, run_id, step, kind, graph_id, owner, attributed_to, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (tenant_id, run_id, step) DO NOTHING";
    let id = uuid::Uuid::now_v7().simple().to_string();
    write_tx!(store, |pool| sqlx::query(SQL)
        .bind(&id)
        .bind(new.tenant_id)
        .bind(new.run_id)
        .bind(new.step)
        .bind(new.kind)
        .bind(new.graph_id)
        .bind(new.owner)
        .bind(new.attributed_to)
        .bind(now_unix())
        .execute(pool)
        .await?
        .rows_affected());
    Ok(())
}

/// The steps of `run_id` already recorded.
///
/// # Errors
/// The database failed.
pub async fn run_steps(
    store: &Store,
    tenant_id: &str,
    run_id: &str,
) -> Result<Vec<ProvisionedObject>, StoreError> {
    const SQL: &str =
        select_objects!("WHERE tenant_id = $1 AND run_id = $2 ORDER BY created_at, id");
    let rows: Vec<Row> = with_pool!(store, |pool| sqlx::query_as(SQL)
        .bind(tenant_id)
        .bind(run_id)
        .fetch_all(pool)
        .await?);
    Ok(rows.into_iter().map(object).collect())
}

/// A tenant's objects, all or only those not removed, oldest first.
///
/// # Errors
/// The database failed.
pub async fn list(
    store: &Store,
    tenant_id: &str,
    include_removed: bool,
) -> Result<Vec<ProvisionedObject>, StoreError> {
    const ALL: &str = select_objects!("WHERE tenant_id = $1 ORDER BY created_at, id");
    const PRESENT: &str =
        select_objects!("WHERE tenant_id = $1 AND removed_at IS NULL ORDER BY created_at, id");
    let sql = if include_removed { ALL } else { PRESENT };
    let rows: Vec<Row> = with_pool!(store, |pool| sqlx::query_as(sql)
        .bind(tenant_id)
        .fetch_all(pool)
        .await?);
    Ok(rows.into_iter().map(object).collect())
}

/// Marks an object removed.
///
/// # Errors
/// The database failed.
pub async fn mark_removed(store: &Store, id: &str) -> Result<(), StoreError> {
    write_tx!(store, |pool| sqlx::query(
        "UPDATE provisioned_objects SET removed_at = $1 WHERE id = $2 AND removed_at IS NULL"
    )
    .bind(now_unix())
    .bind(id)
    .execute(pool)
    .await?
    .rows_affected());
    Ok(())
}

/// A small deterministic generator (SplitMix64): content is reproducible from a seed without
/// a random-number dependency, and it is not for secrets.
#[derive(Debug, Clone)]
pub struct Content {
    state: u64,
}

const FIRST_NAMES: [&str; 16] = [
    "Ava", "Ben", "Chloe", "Daniel", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Keira",
    "Luca", "Maya", "Noah", "Olga", "Priya",
];
const LAST_NAMES: [&str; 16] = [
    "Albers", "Brandt", "Costa", "Dahl", "Engel", "Fischer", "Garcia", "Hansen", "Ito", "Jensen",
    "Kaur", "Lange", "Meyer", "Novak", "Ortiz", "Petrov",
];
const TOPICS: [&str; 12] = [
    "Q3 pipeline review",
    "Onboarding checklist",
    "Customer workshop prep",
    "Budget draft",
    "Release notes",
    "Travel plans for the offsite",
    "Partner contract renewal",
    "Hiring loop feedback",
    "Security awareness training",
    "Roadmap sync",
    "Invoice follow-up",
    "Team lunch",
];
const OPENINGS: [&str; 6] = [
    "Hi {name},",
    "Hello {name},",
    "Good morning {name},",
    "Hey {name},",
    "Dear {name},",
    "{name}, quick one:",
];
const BODIES: [&str; 8] = [
    "could you take a look at the latest version before Thursday? I added the numbers from last week.",
    "thanks for the notes from yesterday. I merged them into the shared document.",
    "the customer asked for a short demo next week. Do you have 30 minutes on Tuesday?",
    "I moved our sync to the afternoon; the agenda is unchanged.",
    "attached is the summary we discussed. Let me know if anything is missing.",
    "can we close the open items on the list by Friday?",
    "the room is booked. I will send the dial-in details separately.",
    "great work on the rollout. Feedback from the field has been positive so far.",
];
const CHAT_LINES: [&str; 8] = [
    "Are you joining the 2 pm call?",
    "Just pushed the update, have a look when you can.",
    "Thanks, that helps a lot!",
    "Running five minutes late.",
    "Can you share the link to the deck?",
    "Lunch at 12:30?",
    "Looks good to me 👍",
    "I'll take the action item on the pricing table.",
];
const DOCUMENTS: [&str; 8] = [
    "Meeting-notes",
    "Project-plan",
    "Status-report",
    "Customer-brief",
    "Budget-overview",
    "Retrospective",
    "Team-charter",
    "Launch-checklist",
];

impl Content {
    /// Content for `seed` and `stream` (e.g. a run and a step), independent of other streams.
    pub fn new(seed: u64, stream: &str) -> Self {
        let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
        for byte in stream.bytes() {
            state = (state ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3);
        }
        Self { state }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `bound` (at least 1).
    pub fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(bound.max(1)).unwrap_or(1)).unwrap_or(0)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// A display name, e.g. `Elena Fischer`.
    pub fn person(&mut self) -> String {
        format!("{} {}", self.pick(&FIRST_NAMES), self.pick(&LAST_NAMES))
    }

    /// A subject line.
    pub fn subject(&mut self) -> String {
        self.pick(&TOPICS).to_string()
    }

    /// A short mail body addressed to `first_name`.
    pub fn mail_body(&mut self, first_name: &str) -> String {
        let opening = self.pick(&OPENINGS).replace("{name}", first_name);
        let first = self.pick(&BODIES);
        let second = self.pick(&BODIES);
        format!("{opening}\n\n{first}\n{second}\n\nBest regards")
    }

    /// A chat line.
    pub fn chat_line(&mut self) -> String {
        self.pick(&CHAT_LINES).to_string()
    }

    /// A document name (no spaces) and its text.
    pub fn document(&mut self, number: usize) -> (String, String) {
        let name = format!("{}-{number}.txt", self.pick(&DOCUMENTS));
        let mut text = format!("{}\n\n", self.subject());
        for _ in 0..(3 + self.below(5)) {
            text.push_str(self.pick(&BODIES));
            text.push('\n');
        }
        (name, text)
    }

    /// A sales data export (CSV) of about `size` bytes: rows of date, region, product, units
    /// and revenue. Large enough exports go to OneDrive through an upload session.
    pub fn data_export(&mut self, number: usize, size: usize) -> (String, String) {
        const REGIONS: [&str; 6] = ["DACH", "Nordics", "Benelux", "Iberia", "UK", "France"];
        const PRODUCTS: [&str; 5] = ["Basic", "Standard", "Premium", "Add-on", "Support"];
        let name = format!("Sales-export-{number}.csv");
        let mut text = String::with_capacity(size + 64);
        text.push_str("date,region,product,units,revenue_eur\n");
        while text.len() < size {
            let day = 1 + self.below(28);
            let month = 1 + self.below(12);
            let units = 1 + self.below(400);
            let price = 20 + self.below(180);
            text.push_str(&format!(
                "2026-{month:02}-{day:02},{},{},{units},{}.{:02}\n",
                self.pick(&REGIONS),
                self.pick(&PRODUCTS),
                units * price,
                self.below(100)
            ));
        }
        (name, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_reproducible_per_seed_and_stream_and_varies_between_them() {
        let draw = |seed, stream| {
            let mut content = Content::new(seed, stream);
            (0..6).map(|_| content.subject()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7, "run-1:mail:0"), draw(7, "run-1:mail:0"));
        assert_ne!(draw(7, "run-1:mail:0"), draw(7, "run-1:mail:1"));
        assert_ne!(draw(7, "run-1:mail:0"), draw(8, "run-1:mail:0"));
        let mut content = Content::new(1, "names");
        let names: std::collections::HashSet<String> = (0..50).map(|_| content.person()).collect();
        assert!(names.len() > 20, "names vary: {}", names.len());
        let (name, text) = Content::new(3, "doc").document(4);
        assert!(name.ends_with("-4.txt") && !name.contains(' '), "{name}");
        assert!(text.lines().count() >= 5);
        let (name, csv) = Content::new(3, "doc").data_export(7, 100_000);
        assert_eq!(name, "Sales-export-7.csv");
        assert!(csv.len() >= 100_000 && csv.len() < 100_100, "{}", csv.len());
        assert!(csv.starts_with("date,region,product,units,revenue_eur\n"));
        assert_eq!(
            csv,
            Content::new(3, "doc").data_export(7, 100_000).1,
            "reproducible"
        );
    }
}
