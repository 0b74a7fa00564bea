//! `--format=json|yaml|table`: the same data as a machine reads it or as a person does.

use anyhow::Result;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Yaml,
    Table,
}

/// A column: header and how to get the cell from an item.
pub struct Column {
    pub header: &'static str,
    pub cell: fn(&Value) -> String,
}

pub fn s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn last(v: &Value) -> String {
    s(v).rsplit('/').next().unwrap_or_default().to_string()
}

pub fn print_value(format: Format, v: &Value) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Format::Yaml | Format::Table => print!("{}", serde_yaml_ng::to_string(v)?),
    }
    Ok(())
}

pub fn print_list(format: Format, items: &[Value], columns: &[Column]) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(items)?),
        Format::Yaml => {
            for item in items {
                println!("---");
                print!("{}", serde_yaml_ng::to_string(item)?);
            }
        }
        Format::Table => {
            if items.is_empty() {
                eprintln!("Listed 0 items.");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = items.iter().map(|i| columns.iter().map(|c| (c.cell)(i)).collect()).collect();
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(n, c)| rows.iter().map(|r| r[n].chars().count()).max().unwrap_or(0).max(c.header.len()))
                .collect();
            let line = |cells: Vec<String>| {
                let mut out = String::new();
                for (n, cell) in cells.iter().enumerate() {
                    if n + 1 == cells.len() {
                        out.push_str(cell);
                    } else {
                        out.push_str(&format!("{cell:<width$}  ", width = widths[n]));
                    }
                }
                println!("{}", out.trim_end());
            };
            line(columns.iter().map(|c| c.header.to_string()).collect());
            for r in rows {
                line(r);
            }
        }
    }
    Ok(())
}
