//! `portcullis access lookup` and `portcullis access check`: the access map from the shell.
//!
//! `lookup` answers "what does the map say about this client?" the way the server asks it
//! (the same lookup order per tag), and names the line that decided, like `sendmail -bt`'s
//! `/map access` but with the file:line an admin needs to change it. Exit 0 with a match, 1
//! without, 78 when the map or the configuration cannot be read.
//!
//! `check` validates a file: every error and warning as `file:line: message`; exit 0 when it
//! loads (warnings allowed), 78 otherwise.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use portcullis_policy::access::{AccessMap, Entry, Tag};
use portcullis_policy::greet_pause::length_of;
use portcullis_smtp::pregreet::from_millis;

use super::{EX_CONFIG, load};
use crate::access;

/// `portcullis access ...`
#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// Look a client or address up as the server would; print the value and the entry
    /// (file:line) that matched. Exit 1 when nothing matches.
    Lookup(LookupArgs),
    /// Validate an access file: errors and warnings with file:line; exit 0 if it loads, 78 if not.
    Check {
        /// The access source file (Sendmail `access` format, what `makemap` reads).
        file: PathBuf,
    },
}

/// Arguments of `access lookup`.
#[derive(Debug, Args)]
pub struct LookupArgs {
    /// The tag to look up.
    #[arg(long, value_enum)]
    tag: TagArg,
    /// The client's IP address (GreetPause, ClientRate, ClientConn, Connect, Srv_Features).
    #[arg(long, value_name = "IP", required_unless_present = "address")]
    client: Option<IpAddr>,
    /// The client's (confirmed) host name; host-name keys are tried first.
    #[arg(long, value_name = "NAME", requires = "client")]
    host: Option<String>,
    /// An e-mail address (From, To, Spam).
    #[arg(long, value_name = "ADDR", conflicts_with = "client")]
    address: Option<String>,
    /// Configuration file whose `[access] file` to use (the embedded default otherwise).
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "file")]
    config: Option<PathBuf>,
    /// The access file itself.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

/// The tags as typed on the command line (Sendmail's spelling, case-insensitive).
#[derive(Clone, Copy, Debug, ValueEnum)]
#[value(rename_all = "verbatim")]
enum TagArg {
    #[value(alias = "greetpause")]
    GreetPause,
    #[value(alias = "clientrate")]
    ClientRate,
    #[value(alias = "clientconn")]
    ClientConn,
    #[value(alias = "connect")]
    Connect,
    #[value(alias = "from")]
    From,
    #[value(alias = "to")]
    To,
    #[value(alias = "spam")]
    Spam,
    #[value(name = "Srv_Features", alias = "srv_features")]
    SrvFeatures,
}

impl TagArg {
    fn tag(self) -> Tag {
        match self {
            Self::GreetPause => Tag::GreetPause,
            Self::ClientRate => Tag::ClientRate,
            Self::ClientConn => Tag::ClientConn,
            Self::Connect => Tag::Connect,
            Self::From => Tag::From,
            Self::To => Tag::To,
            Self::Spam => Tag::Spam,
            Self::SrvFeatures => Tag::SrvFeatures,
        }
    }
}

/// Runs an `access` subcommand; returns the exit code.
pub fn run(command: AccessCommand) -> i32 {
    match command {
        AccessCommand::Lookup(args) => lookup(&args),
        AccessCommand::Check { file } => check(&file),
    }
}

fn check(file: &Path) -> i32 {
    match access::load(Some(file)) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            println!(
                "{}: access map OK: {} entries, {} warning(s)",
                file.display(),
                loaded.map.len(),
                loaded.warnings.len()
            );
            0
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{} error(s); access map not valid", errors.len());
            EX_CONFIG
        }
    }
}

fn lookup(args: &LookupArgs) -> i32 {
    let path = match map_path(args) {
        Ok(Some(path)) => path,
        Ok(None) => {
            eprintln!("no access map: the configuration has no `[access] file`; give --file");
            return EX_CONFIG;
        }
        Err(code) => return code,
    };
    let loaded = match access::load(Some(&path)) {
        Ok(loaded) => loaded,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return EX_CONFIG;
        }
    };
    let tag = args.tag.tag();
    let Some(query) = Query::from_args(args) else {
        eprintln!("--address must be user@domain, user@ or domain");
        return 64;
    };
    match query.run(&loaded.map, tag) {
        Some(entry) => {
            println!("{}", entry.value);
            println!("{}:{}: {entry}", loaded.map.source(), entry.line);
            if let Some(meaning) = meaning(tag, entry.value) {
                println!("{meaning}");
            }
            0
        }
        None => {
            println!("no match for {tag} ({})", query.describe());
            1
        }
    }
}

/// The access file named by `--file`, or by the configuration's `[access] file`.
fn map_path(args: &LookupArgs) -> Result<Option<PathBuf>, i32> {
    if let Some(file) = &args.file {
        return Ok(Some(file.clone()));
    }
    match load(args.config.as_deref()) {
        Ok(loaded) => Ok(loaded.config.access.file),
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            Err(EX_CONFIG)
        }
    }
}

/// What is looked up.
enum Query<'a> {
    Client { addr: IpAddr, host: Option<&'a str> },
    Mail { local: &'a str, domain: &'a str },
}

impl<'a> Query<'a> {
    fn from_args(args: &'a LookupArgs) -> Option<Self> {
        if let Some(addr) = args.client {
            return Some(Self::Client {
                addr,
                host: args.host.as_deref(),
            });
        }
        let address = args.address.as_deref()?;
        let address = address.trim_start_matches('<').trim_end_matches('>');
        let (local, domain) = address.rsplit_once('@').unwrap_or(("", address));
        Some(Self::Mail { local, domain })
    }

    /// The lookup the server makes for `tag` (the rulesets live in the policy crate).
    fn run<'m>(&self, map: &'m AccessMap, tag: Tag) -> Option<Entry<'m>> {
        match *self {
            Self::Client { addr, host } => map.lookup_client_for(tag, host, addr),
            Self::Mail { local, domain } => map.lookup_mail_for(tag, local, domain),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Client {
                addr,
                host: Some(h),
            } => format!("client {addr}, host {h}"),
            Self::Client { addr, host: None } => format!("client {addr}"),
            Self::Mail { local, domain } => format!("address {local}@{domain}"),
        }
    }
}

/// What a value means for the tags whose values are numbers.
fn meaning(tag: Tag, value: &str) -> Option<String> {
    use portcullis_policy::access::number;
    let n = number(value);
    Some(match tag {
        Tag::GreetPause => {
            let length = length_of(value);
            if length.is_zero() {
                "meaning: no greeting pause".to_owned()
            } else {
                let clamp = if length < from_millis(n) {
                    " (clamped to 300 s)"
                } else {
                    ""
                };
                format!("meaning: greeting pause {} ms{clamp}", length.as_millis())
            }
        }
        Tag::ClientRate | Tag::ClientConn if n <= 0 => "meaning: no limit".to_owned(),
        Tag::ClientRate => format!("meaning: at most {n} connections per window"),
        Tag::ClientConn => format!("meaning: at most {n} simultaneous connections"),
        _ => return None,
    })
}
