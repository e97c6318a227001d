//! Admission as a service, over any transport: the images of a request decided (cache, single
//! flight, the workers), within a deadline; the audit records of what was answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use atproto_sig_core::Reason;
use serde_json::{Value as Json, json};

use super::admission::{AdmissionRequest, ContainerImage, canonical};
use super::decisions::{Decided, Decisions, Joined, Key};
use super::pool::{Job, Pool};
use super::settings::Settings;
use super::telemetry::Telemetry;

/// The decision queue was full: answered at once, as HTTP 503.
#[derive(Debug, PartialEq, Eq)]
pub struct Overloaded;

/// What a decision waits for beyond its deadline before it is answered as undecided (the
/// engine answers at its deadline itself; this covers a worker that is late to start it).
const GRACE: Duration = Duration::from_millis(50);

pub struct Admission {
    /// How long one shared decision may run: the server's own, whoever asked first. Each
    /// asker waits only until its own deadline; a short one never cuts the decision short
    /// for the others (nor for the next asker, who finds it in flight or cached).
    pub decision_deadline: Duration,
    pub settings: Settings,
    pub decisions: Arc<Decisions>,
    pub pool: Pool,
    pub telemetry: Arc<Telemetry>,
}

impl Admission {
    /// Each reference decided, in order; answered by `deadline` (the asker's), whatever is
    /// still undecided then answered as `deadline-exceeded` while its decision goes on.
    pub async fn decide_all(&self, references: &[String], deadline: Instant) -> Result<Vec<Arc<Decided>>, Overloaded> {
        let loaded = self.settings.current();
        let now = Instant::now();
        let shared_deadline = now + self.decision_deadline;
        let mut pending = Vec::with_capacity(references.len());
        let mut overloaded = false;
        for reference in references {
            // Two spellings of one image are one key.
            let key = Key { image: canonical(reference), generation: loaded.generation };
            match self.decisions.join(&key, now) {
                Joined::Cached(decided) => pending.push(Ok(decided)),
                Joined::Waiting(rx) => pending.push(Err(rx)),
                Joined::Lead(rx) => {
                    let job = Job { key: key.clone(), reference: reference.clone(), loaded: Arc::clone(&loaded), deadline: shared_deadline };
                    self.telemetry.queued(1);
                    if self.pool.submit(job).is_err() {
                        self.telemetry.queued(-1);
                        self.decisions.abandon(&key);
                        overloaded = true;
                    }
                    pending.push(Err(rx));
                }
            }
        }
        if overloaded {
            self.telemetry.overloaded();
            return Err(Overloaded);
        }
        let mut decided = Vec::with_capacity(pending.len());
        for item in pending {
            let answer = match item {
                Ok(cached) => cached,
                Err(rx) => match tokio::time::timeout_at((deadline + GRACE).into(), rx).await {
                    Ok(Ok(answer)) => answer,
                    // The flight was abandoned (queue full for its leader).
                    Ok(Err(_)) => return Err(Overloaded),
                    Err(_) => {
                        self.telemetry.deadline_passed();
                        Arc::new(Decided::undecided(
                            Reason::DeadlineExceeded,
                            "not decided before the caller's deadline".into(),
                            "retry; the decision goes on and is cached when it completes",
                        ))
                    }
                },
            };
            self.telemetry.answered(&answer);
            decided.push(answer);
        }
        Ok(decided)
    }

    /// One audit record per image of an admission review. Dry runs are recorded as such.
    pub fn audit_review(&self, request: &AdmissionRequest, answers: &[(ContainerImage, Arc<Decided>)], mutating: bool) {
        let records = answers
            .iter()
            .map(|(image, decided)| {
                let mut record = record(&image.image, decided);
                record.insert("source".into(), json!(if mutating { "admission-mutate" } else { "admission" }));
                record.insert("uid".into(), json!(request.uid));
                record.insert("kind".into(), json!(request.kind.kind));
                record.insert("namespace".into(), json!(request.namespace));
                record.insert("object".into(), json!(request.name));
                record.insert(if image.is_volume() { "volume" } else { "container" }.into(), json!(image.name));
                record.insert("dryRun".into(), json!(request.dry_run.unwrap_or(false)));
                Json::Object(record)
            })
            .collect();
        self.write_audit(records);
    }

    /// One audit record per key of a Gatekeeper request.
    pub fn audit_keys(&self, keys: &[String], decided: &[Arc<Decided>]) {
        let records = keys
            .iter()
            .zip(decided)
            .map(|(key, decided)| {
                let mut record = record(key, decided);
                record.insert("source".into(), json!("gatekeeper"));
                Json::Object(record)
            })
            .collect();
        self.write_audit(records);
    }

    fn write_audit(&self, records: Vec<Json>) {
        let loaded = self.settings.current();
        if loaded.config.audit_log.is_none() {
            return;
        }
        // A file append: off the reactor.
        tokio::task::spawn_blocking(move || {
            for record in records {
                crate::bindir::audit::record(&loaded.config, record);
            }
        });
    }
}

fn record(name: &str, decided: &Decided) -> serde_json::Map<String, Json> {
    let mut record = serde_json::Map::new();
    record.insert("time".into(), json!(crate::bindir::audit::now_string()));
    record.insert("name".into(), json!(name));
    record.insert("image".into(), json!(decided.image));
    record.insert("digest".into(), json!(decided.digest));
    record.insert("admitted".into(), json!(decided.class == crate::engine::Class::Admitted));
    record.insert("outcome".into(), json!(crate::engine::outcome_label(decided.outcome)));
    record.insert("reason".into(), json!(decided.reason.code()));
    record.insert("message".into(), json!(decided.message));
    record.insert("rule".into(), json!(decided.rule));
    record.insert("signers".into(), json!(decided.signers));
    record
}
