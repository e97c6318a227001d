//! Output formats for operator commands.

use clap::ValueEnum;

/// `--format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON document for scripts.
    Json,
}

/// Prints a JSON value on one line.
pub fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// Prints an error for a command that could not run (exit 2), with a hint.
pub fn print_undecided(format: Format, message: &str, hint: &str) {
    print_failure(format, "invalid-request", message, hint);
}

/// Prints a config.toml problem (exit 2), with the `config-invalid` reason code.
pub fn print_config_invalid(format: Format, message: &str) {
    print_failure(format, "config-invalid", message, "fix config.toml (every setting is documented in packaging/config.toml)");
}

fn print_failure(format: Format, reason: &str, message: &str, hint: &str) {
    match format {
        Format::Json => print_json(&serde_json::json!({"admitted": false, "reason": reason, "message": message, "hint": hint})),
        Format::Text => {
            eprintln!("error: {}", crate::limits::printable(message));
            if !hint.is_empty() {
                eprintln!("hint: {hint}");
            }
        }
    }
}

/// config.toml for a command: loaded, or the `config-invalid` problem printed and the exit
/// code to return (2).
pub fn load_config(path: Option<&std::path::Path>, format: Format) -> Result<crate::config::Config, u8> {
    crate::config::Config::load(path).map_err(|e| {
        print_config_invalid(format, &e.to_string());
        crate::exit::UNDECIDED
    })
}
