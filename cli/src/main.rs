#![doc = include_str!("../README.md")]

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use handoff_core::*;
use rand::RngCore;
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(name = "handoff", version, about = "A Handoff phone, from a terminal")]
#[command(
    after_help = "Any text that may name a patient (--patient, --notes, --title, ...) \
can be given as `-` to read it from standard input, one per command: \
arguments show in `ps` to every account on the host and stay in shell history. \
The invite is read the same way when --invite is left out (or from HANDOFF_INVITE)."
)]
struct Cli {
    /// The device's store. Its key is kept beside it in `<store>.key`
    /// (on a phone the key lives in the Keystore/Keychain).
    #[arg(long, env = "HANDOFF_STORE", default_value = "phone.db", global = true)]
    store: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Redeem an invite from the practice admin.
    Enrol {
        #[arg(long)]
        relay: String,
        /// Left out: read from standard input.
        #[arg(long, env = "HANDOFF_INVITE", hide_env_values = true)]
        invite: Option<String>,
    },
    /// Push what this phone did and pull what others did; `--live` keeps going.
    Sync {
        #[arg(long)]
        live: bool,
    },
    /// My queue: overdue, today, upcoming.
    Queue,
    /// The shared pool of my role.
    Pool,
    /// Work waiting for my review.
    Inbox,
    /// My actions that did not take effect, with the reason.
    Attention,
    /// A task with its full history.
    Show {
        task: String,
    },
    /// Hand a task off to a person or to a role's pool.
    Delegate {
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        outcome: String,
        #[arg(long, default_value = "")]
        why: String,
        /// Assignee's user id.
        #[arg(long)]
        to: Option<String>,
        /// Or the role whose pool it waits in.
        #[arg(long)]
        pool: Option<String>,
        /// Due in this many hours (up to ten years).
        #[arg(long, value_parser = clap::value_parser!(i64).range(0..=87_600))]
        due_hours: Option<i64>,
        /// Patient's display name.
        #[arg(long)]
        patient: Option<String>,
        #[arg(long)]
        clinician_only: bool,
    },
    Assign {
        task: String,
        to: String,
    },
    Claim {
        task: String,
    },
    /// Log a call attempt: reached, voicemail, no_answer, busy, not_home,
    /// wrong_number, declined, rescheduled.
    Call {
        task: String,
        #[arg(long)]
        outcome: String,
        #[arg(long, default_value = "")]
        notes: String,
    },
    Submit {
        task: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    Approve {
        task: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    Return {
        task: String,
        #[arg(long)]
        feedback: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handoff: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The store's key: 32 random bytes in a 0600 file beside it. Every copy
/// in memory is wiped when dropped.
fn key_for(store: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    let path = PathBuf::from(format!("{}.key", store.display()));
    if let Ok(hex_key) = std::fs::read_to_string(&path).map(Zeroizing::new) {
        return hex::decode(hex_key.trim())
            .map(Zeroizing::new)
            .map_err(|_| format!("{} is not a key", path.display()));
    }
    let mut key = Zeroizing::new(vec![0u8; 32]);
    rand::rng().fill_bytes(&mut key);
    write_private(&path, &Zeroizing::new(hex::encode(&*key)))
        .map_err(|e| format!("cannot save the key: {e}"))?;
    Ok(key)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// Where a text given as `-` comes from: standard input, read once, for
/// at most one text a command. Patient details and invites given as
/// arguments are seen by every account on the host (`ps`) and kept in
/// shell history.
struct Texts<R> {
    input: R,
    /// Someone at a terminal: ask, and take one line.
    at_terminal: bool,
    read_for: Option<&'static str>,
}

impl<R: BufRead> Texts<R> {
    fn new(input: R, at_terminal: bool) -> Self {
        Texts {
            input,
            at_terminal,
            read_for: None,
        }
    }

    /// `value` as given, or, for `-`, what standard input holds (without
    /// its last line break).
    fn text(&mut self, flag: &'static str, value: String) -> Result<String, String> {
        if value != "-" {
            return Ok(value);
        }
        if let Some(first) = self.read_for {
            return Err(format!(
                "--{first} reads standard input already: give --{flag} as an argument"
            ));
        }
        self.read_for = Some(flag);
        let mut text = String::new();
        let read = if self.at_terminal {
            eprint!("{flag}: ");
            let _ = std::io::stderr().flush();
            self.input.read_line(&mut text)
        } else {
            self.input.read_to_string(&mut text)
        };
        read.map_err(|e| format!("cannot read --{flag} from standard input: {e}"))?;
        let end = text.trim_end_matches(['\n', '\r']).len();
        text.truncate(end);
        if text.is_empty() {
            return Err(format!("--{flag} -: standard input was empty"));
        }
        Ok(text)
    }

    fn optional(
        &mut self,
        flag: &'static str,
        value: Option<String>,
    ) -> Result<Option<String>, String> {
        value.map(|v| self.text(flag, v)).transpose()
    }
}

/// A task id, or an unambiguous prefix of one.
fn task_id(store: &Store, given: &str) -> Result<String, String> {
    let ids = store.task_ids().map_err(|e| e.to_string())?;
    let matches: Vec<_> = ids.into_iter().filter(|id| id.starts_with(given)).collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("no task {given} on this phone")),
        _ => Err(format!(
            "{given} matches several tasks; give more of the id"
        )),
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let key = key_for(&cli.store)?;
    let store = Arc::new(
        Store::open(&cli.store, &key, StoreOptions::default()).map_err(|e| e.to_string())?,
    );
    let s = &*store;
    let e = |e: Error| e.to_string();
    let mut texts = Texts::new(std::io::stdin().lock(), std::io::stdin().is_terminal());
    match cli.command {
        Cmd::Enrol { relay, invite } => {
            let invite = texts.text("invite", invite.unwrap_or_else(|| "-".to_owned()))?;
            let invite = invite.trim();
            let engine = SyncEngine::new(store.clone()).map_err(e)?;
            // A clinic's long history: say how far the first pull has come.
            #[derive(Default)]
            struct Progress(std::sync::atomic::AtomicUsize);
            impl SyncListener for Progress {
                fn on_sync_event(&self, event: SyncEvent) {
                    match event {
                        SyncEvent::CatchingUp { at, of } => eprintln!("catching up: {at} of {of}"),
                        SyncEvent::Sending { sent, of } => eprintln!("sending: {sent} of {of}"),
                        SyncEvent::Synced(r) => self.0.store(r.pulled, Ordering::Relaxed),
                        _ => {}
                    }
                }
            }
            let progress = Arc::new(Progress::default());
            // Cut short (no signal), the same command fetches the rest.
            let who = engine
                .enrol_and_catch_up(&relay, invite, progress.clone())
                .map_err(e)?;
            println!(
                "enrolled as {} ({}) in team {}; pulled {} changes",
                who.user,
                who.role.as_str(),
                who.team,
                progress.0.load(Ordering::Relaxed)
            );
        }
        Cmd::Sync { live } => {
            let engine = SyncEngine::new(store.clone()).map_err(e)?;
            if live {
                struct Print(std::sync::mpsc::Sender<String>);
                impl SyncListener for Print {
                    fn on_sync_event(&self, event: SyncEvent) {
                        println!("{event:?}");
                        // Live sync ends after these: so does the command.
                        let ended = match &event {
                            SyncEvent::Revoked => {
                                Some("this device was revoked; its store is wiped".to_owned())
                            }
                            SyncEvent::AuthFailed { code, message } => {
                                Some(format!("live sync stopped: {message} ({code})"))
                            }
                            _ => None,
                        };
                        if let Some(why) = ended {
                            let _ = self.0.send(why);
                        }
                    }
                }
                let (ended, why) = std::sync::mpsc::channel();
                let _handle = engine.start(Arc::new(Print(ended))).map_err(e)?;
                println!("live sync; Ctrl-C to stop");
                return Err(why
                    .recv()
                    .unwrap_or_else(|_| "live sync stopped".to_owned()));
            }
            let r = engine.sync_now().map_err(e)?;
            println!(
                "pushed {}, refused {}, pulled {}, tasks updated {}",
                r.pushed, r.refused, r.pulled, r.tasks_updated
            );
            if r.offered_again > 0 {
                println!(
                    "the relay had lost {} of this device's changes (restored from a backup); it has them again",
                    r.offered_again
                );
            }
        }
        Cmd::Queue => {
            let q = s.my_queue().map_err(e)?;
            for (name, tasks) in [
                ("overdue", &q.overdue),
                ("today", &q.today),
                ("upcoming", &q.upcoming),
            ] {
                println!("{name}:");
                for t in tasks {
                    println!(
                        "  {}  {:<11} {}",
                        short(&t.task_id),
                        t.status.as_str(),
                        t.title
                    );
                }
            }
        }
        Cmd::Pool => {
            for t in s.shared_pool().map_err(e)? {
                println!("{}  {}", short(&t.task_id), t.title);
            }
        }
        Cmd::Inbox => {
            for r in s.review_inbox().map_err(e)? {
                println!(
                    "{}  {}{}",
                    short(&r.task.task_id),
                    r.task.title,
                    if r.overdue { "  (review overdue)" } else { "" }
                );
            }
        }
        Cmd::Attention => {
            for a in s.needs_attention().map_err(e)? {
                println!(
                    "{}  {}: {} ({})",
                    a.title.as_deref().unwrap_or("-"),
                    a.action,
                    a.reason,
                    a.code
                );
            }
        }
        Cmd::Show { task } => {
            let d = s.task_detail(&task_id(s, &task)?).map_err(e)?;
            let st = &d.state;
            println!("{}  [{}]", st.handoff.title, st.status.as_str());
            println!("  outcome wanted: {}", st.handoff.outcome);
            println!("  assignee: {}", st.assignee.as_deref().unwrap_or("(pool)"));
            if let Some(p) = &d.patient {
                println!("  patient: {}", p.display_name);
            }
            for h in &st.history {
                let outcome = match &h.outcome {
                    derive::Outcome::Applied => String::new(),
                    other => format!("  <- {other:?}"),
                };
                println!("  {} {}: {}{}", utc(h.at), h.by, h.action.name(), outcome);
            }
        }
        Cmd::Delegate {
            title,
            outcome,
            why,
            to,
            pool,
            due_hours,
            patient,
            clinician_only,
        } => {
            let pool = match pool {
                Some(p) => Some(Role::parse(&p).ok_or(format!("unknown role {p}"))?),
                None => None,
            };
            let title = texts.text("title", title)?;
            let outcome = texts.text("outcome", outcome)?;
            let why = texts.text("why", why)?;
            let patient = texts.optional("patient", patient)?;
            let id = s
                .delegate(NewTask {
                    handoff: Handoff {
                        title,
                        outcome,
                        why,
                        due: due_hours.map(|h| s.now() + h * HOUR_MS),
                        priority: Priority::Normal,
                        category: Category::FollowUpCall,
                        level: if clinician_only {
                            DelegationLevel::ClinicianOnly
                        } else {
                            DelegationLevel::Delegable
                        },
                        sop: None,
                        route_result_to: None,
                    },
                    patient: patient.map(|name| PatientRef {
                        display_name: name,
                        phone: None,
                        record_ref: None,
                    }),
                    assignee: to,
                    pool,
                })
                .map_err(e)?;
            println!("{id}");
        }
        Cmd::Assign { task, to } => {
            s.assign(&task_id(s, &task)?, &to).map_err(e)?;
        }
        Cmd::Claim { task } => {
            s.claim(&task_id(s, &task)?).map_err(e)?;
        }
        Cmd::Call {
            task,
            outcome,
            notes,
        } => {
            let outcome: CallOutcome =
                serde_json_value(&outcome).ok_or(format!("unknown call outcome {outcome}"))?;
            let notes = texts.text("notes", notes)?;
            s.log_call(
                &task_id(s, &task)?,
                CallAttempt {
                    outcome,
                    contact_used: None,
                    notes,
                    answers: Vec::new(),
                    next_attempt_due: None,
                },
            )
            .map_err(e)?;
        }
        Cmd::Submit { task, note } => {
            s.submit(&task_id(s, &task)?, &texts.text("note", note)?)
                .map_err(e)?;
        }
        Cmd::Approve { task, note } => {
            s.approve(&task_id(s, &task)?, &texts.text("note", note)?)
                .map_err(e)?;
        }
        Cmd::Return { task, feedback } => {
            s.return_work(&task_id(s, &task)?, &texts.text("feedback", feedback)?)
                .map_err(e)?;
        }
    }
    Ok(())
}

/// Parse a snake_case enum name the way the core serializes it.
fn serde_json_value<T: serde::de::DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

/// A time the way a person reads it, in UTC ("2026-11-30 13:05:09 UTC"),
/// from milliseconds since 1970 (Howard Hinnant's days-to-civil).
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// A task id's first 8 characters, as lists show it (a task id from
/// another client may be shorter).
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{short, utc, Texts};

    #[test]
    fn a_text_given_as_a_dash_is_read_from_standard_input_once() {
        let mut texts = Texts::new(&b"Jane Q. Patient\r\n"[..], false);
        assert_eq!(
            texts.text("title", "Call back".into()).unwrap(),
            "Call back"
        );
        assert_eq!(
            texts.text("patient", "-".into()).unwrap(),
            "Jane Q. Patient"
        );
        let refused = texts.text("notes", "-".into()).unwrap_err();
        assert!(
            refused.contains("--patient reads standard input already"),
            "{refused}"
        );
        assert_eq!(texts.optional("why", None).unwrap(), None);
        // Nothing on standard input is an error, not an empty patient.
        let refused = Texts::new(&b"\n"[..], false)
            .text("patient", "-".into())
            .unwrap_err();
        assert!(refused.contains("empty"), "{refused}");
        // Lines inside a note are kept; only the last line break goes.
        let mut texts = Texts::new(&b"line one\nline two\n"[..], false);
        assert_eq!(
            texts.text("notes", "-".into()).unwrap(),
            "line one\nline two"
        );
        // At a terminal, one line is the answer.
        let mut texts = Texts::new(&b"3f9a-0c12\nmore\n"[..], true);
        assert_eq!(texts.text("invite", "-".into()).unwrap(), "3f9a-0c12");
    }

    #[test]
    fn lists_show_a_task_id_short_however_long_it_is() {
        assert_eq!(short("0123456789abcdef"), "01234567");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short(""), "");
    }

    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_044_364_455), "2026-11-30 13:12:44 UTC");
        assert_eq!(utc(-1_000), "1969-12-31 23:59:59 UTC");
    }
}
