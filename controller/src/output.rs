//! How `byoi`'s read commands print (`-o table|json|yaml`): a table with a
//! header row for people (comfy-table, no borders, so columns line up and
//! `awk` still splits them), or the controller's own JSON answer, as JSON
//! or as YAML, for scripts. JSON and YAML show what the API says, field
//! for field, so a script written against the CLI reads the API's names.

use std::io::Write;

use serde_json::Value;

/// `-o`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// A table with a header row, for people.
    #[default]
    Table,
    /// The controller's answer as JSON (one object a line with --follow).
    Json,
    /// The controller's answer as YAML (one document each with --follow).
    Yaml,
}

/// The `-o` flag of a read command.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct OutputArgs {
    /// Output: table (for people), json or yaml (the controller's
    /// answer, for scripts).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// A table with a header row.
#[derive(Debug)]
pub struct Table(comfy_table::Table);

impl Table {
    /// An empty table with these column names.
    pub fn new(header: &[&str]) -> Table {
        let mut t = comfy_table::Table::new();
        t.load_style(comfy_table::presets::NOTHING)
            .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
            .set_header(header.to_vec());
        // The preset pads each cell with a space on both sides; the first
        // column starts at the margin, as `ls -l` and `kubectl get` do.
        if let Some(first) = t.column_mut(0) {
            first.set_padding((0, 1));
        }
        Table(t)
    }

    /// Adds a row.
    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Table {
        self.0.add_row(cells.into_iter().map(|c| c.to_string()).collect::<Vec<_>>());
        self
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for line in self.0.lines() {
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Prints `data` as `format` says: `table()` for a table, else the data
/// itself.
pub fn print(format: Format, data: &Value, table: impl FnOnce() -> String) -> anyhow::Result<()> {
    let text = match format {
        Format::Table => table(),
        Format::Json => serde_json::to_string_pretty(data)? + "\n",
        Format::Yaml => serde_yaml_ng::to_string(data)?,
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// One document of a stream (`status --follow`): a JSON object on one
/// line, or a YAML document after `---`.
pub fn print_streamed(format: Format, data: &Value) -> anyhow::Result<()> {
    let text = match format {
        Format::Table => return Ok(()),
        Format::Json => serde_json::to_string(data)? + "\n",
        Format::Yaml => format!("---\n{}", serde_yaml_ng::to_string(data)?),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// A cell for a JSON value: strings as they are, lists joined by commas,
/// nothing as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_line_up_under_their_header() {
        let mut t = Table::new(&["NAME", "MACS", "POWER"]);
        t.row(["web1", "52:54:00:00:00:01,52:54:00:00:00:02", "ipmi"]);
        t.row(["db10", "-", "manual"]);
        let text = t.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAME"), "{text}");
        let col = lines[0].find("MACS").unwrap();
        assert_eq!(lines[1].find("52:54"), Some(col), "{text}");
        assert_eq!(lines[2].find('-'), Some(col), "{text}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["web1", "52:54:00:00:00:01,52:54:00:00:00:02", "ipmi"]
        );
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn cells_of_json_values() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!("")), "-");
        assert_eq!(cell(&json!("on")), "on");
        assert_eq!(cell(&json!(["a", "b"])), "a,b");
        assert_eq!(cell(&json!([])), "-");
        assert_eq!(cell(&json!(3)), "3");
        assert_eq!(cell(&json!(true)), "true");
    }

    #[test]
    fn yaml_is_the_same_data() {
        let v = json!({"kind": "ipmi", "state": "on", "macs": ["52:54:00:00:00:01"]});
        let yaml = serde_yaml_ng::to_string(&v).unwrap();
        let back: Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(back, v);
    }
}
