//! Plain text tables for the operator commands: a header row and left-aligned columns.

use serde_json::Value;

/// A table of text cells, rendered with columns padded to their widest cell.
#[derive(Debug, Clone)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<const N: usize>(headers: [&str; N]) -> Table {
        Table { rows: vec![headers.iter().map(|h| h.to_string()).collect()] }
    }

    /// Adds a row.
    pub fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into_iter().map(|c| c.replace(['\n', '\t'], " ")).collect());
    }

    /// The table as text, one line per row; only the header when there are no rows.
    pub fn render(&self) -> String {
        self.render_indented(0)
    }

    /// The table as text, every line indented by `indent` spaces.
    pub fn render_indented(&self, indent: usize) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = " ".repeat(indent);
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < row.len() {
                    line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A JSON value as a table cell: strings bare, `null` as `-`, anything else as compact JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(["NAME", "STATE"]);
        t.row(["org-b".into(), "connected".into()]);
        t.row(["a".into(), cell(&json!(null))]);
        assert_eq!(t.render(), "NAME   STATE\norg-b  connected\na      -\n");
    }
}
