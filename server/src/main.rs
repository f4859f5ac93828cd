//! `handoff-server`: the relay, and the admin commands that run on its
//! database file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use handoff_core::Role;
use handoff_server::{relay, Db, ServeConfig};

#[derive(Parser)]
#[command(name = "handoff-server", version, about = "Handoff relay server")]
struct Cli {
    /// The relay's SQLite database file.
    #[arg(
        long,
        env = "HANDOFF_DB",
        default_value = "handoff-relay.db",
        global = true
    )]
    db: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
        /// Address to listen on. Plain http binds loopback only.
        #[arg(long, env = "HANDOFF_BIND", default_value = "127.0.0.1:7878")]
        bind: SocketAddr,
        /// PEM certificate chain: serve https (with --tls-key).
        #[arg(long, env = "HANDOFF_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key.
        #[arg(long, env = "HANDOFF_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve plain http on a public address (only behind a TLS proxy).
        #[arg(long)]
        allow_plain_http: bool,
        /// Seconds a request may take to arrive: its head must be in within
        /// them (or the connection is closed; an idle connection too), and
        /// its body may pause that long between pieces (then 408), and take
        /// ten minutes in all.
        #[arg(long, env = "HANDOFF_READ_PAUSE_SECS", default_value_t = 30,
              value_parser = clap::value_parser!(u64).range(1..=600))]
        read_pause_secs: u64,
    },
    /// Create a team and print its id and the first admin's invite.
    CreateTeam {
        #[arg(long)]
        name: String,
        /// The first admin's user id.
        #[arg(long, default_value = "admin")]
        admin: String,
        /// The first admin's display name.
        #[arg(long, default_value = "Practice admin")]
        admin_name: String,
        /// The first member's role: admin or manager.
        #[arg(long, default_value = "admin")]
        role: String,
        /// Make the team even though another has this name.
        #[arg(long)]
        again: bool,
    },
    /// Issue a one-time invite for a user and role.
    Invite {
        #[arg(long)]
        team: String,
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        /// clinician, manager, clinical_assistant, front_desk or admin.
        #[arg(long)]
        role: String,
        /// Hours until the invite expires (1 to 744, a month).
        #[arg(long, default_value_t = 72)]
        hours: u32,
    },
    /// List teams.
    Teams,
    /// List a team's devices.
    Devices {
        #[arg(long)]
        team: String,
    },
    /// Revoke a device: its next request gets 401 and it wipes itself.
    Revoke {
        #[arg(long)]
        device: String,
    },
}

/// The relay's database, for a command that reads or changes what is in
/// it: a mistyped `--db` is an error, not a new empty database (where
/// `revoke` would then find no device to revoke).
fn existing_db(path: &std::path::Path) -> Result<Db, String> {
    if !path.exists() {
        return Err(format!(
            "no relay database at {} (`serve` or `create-team` makes one)",
            path.display()
        ));
    }
    Db::open(path).map_err(|e| e.to_string())
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| {
        format!(
            "unknown role '{s}': use clinician, manager, clinical_assistant, front_desk or admin"
        )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HANDOFF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handoff-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let err = |e: handoff_server::Error| e.to_string();
    match cli.command {
        Command::Serve {
            bind,
            tls_cert,
            tls_key,
            allow_plain_http,
            read_pause_secs,
        } => {
            let config = ServeConfig {
                db_path: cli.db,
                bind,
                tls: tls_cert.zip(tls_key),
                allow_plain_http,
                read_pause: std::time::Duration::from_secs(read_pause_secs),
            };
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            runtime
                .block_on(handoff_server::serve(config, |addr| {
                    // Tests and scripts read this line to find the port.
                    println!("listening on {scheme}://{addr}");
                }))
                .map_err(err)
        }
        Command::CreateTeam {
            name,
            admin,
            admin_name,
            role,
            again,
        } => {
            let role = parse_role(&role)?;
            if !role.default_permissions().may_manage_team {
                return Err("the first member must be an admin or a manager".into());
            }
            relay::check_invite(&admin, &admin_name, 72).map_err(err)?;
            let db = Db::open(&cli.db).map_err(err)?;
            let team = relay::create_team(&db, &name, again).map_err(err)?;
            let code = relay::create_invite(&db, &team.team_id, &admin, &admin_name, role, 72)
                .map_err(err)?;
            println!("team {}", team.team_id);
            println!("invite {code}");
            Ok(())
        }
        Command::Invite {
            team,
            user,
            name,
            role,
            hours,
        } => {
            let role = parse_role(&role)?;
            let db = existing_db(&cli.db)?;
            let code = relay::create_invite(&db, &team, &user, &name, role, hours).map_err(err)?;
            println!("{code}");
            Ok(())
        }
        Command::Teams => {
            let db = existing_db(&cli.db)?;
            let teams = db.read(Db::teams).map_err(err)?;
            for t in teams {
                println!("{}\t{}", t.team_id, t.name);
            }
            Ok(())
        }
        Command::Devices { team } => {
            let db = existing_db(&cli.db)?;
            // A mistyped team lists no devices: say so, not "none".
            if db.read(|c| Db::team(c, &team)).map_err(err)?.is_none() {
                return Err(format!("no team {team} in this relay database"));
            }
            let devices = db.read(|c| Db::devices(c, &team)).map_err(err)?;
            for d in devices {
                println!(
                    "{}\t{}\t{}\t{}",
                    d.actor,
                    d.user_id,
                    d.role,
                    if d.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    }
                );
            }
            Ok(())
        }
        Command::Revoke { device } => {
            let db = existing_db(&cli.db)?;
            if db
                .revoke_device(&device.to_ascii_lowercase(), relay::now_ms())
                .map_err(err)?
            {
                println!("revoked {device}");
                Ok(())
            } else {
                Err(format!("no active device {device}"))
            }
        }
    }
}
