//! Keeps docs/iam.md's role table true to the code.

use runnel_policy::roles;

#[test]
fn the_role_table_in_the_docs_matches_the_code() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/iam.md")).unwrap();
    let mut seen = 0;
    for line in doc.lines().filter(|l| l.starts_with("| `roles/")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let role = cells[1].trim_matches('`');
        let mut documented: Vec<&str> = cells[3].split(',').map(|p| p.trim().trim_matches('`')).collect();
        let mut actual = roles::permissions_of(role);
        documented.sort_unstable();
        actual.sort_unstable();
        assert_eq!(documented, actual, "docs/iam.md row for {role}");
        assert_eq!(Some(cells[2]), roles::title(role), "title of {role}");
        seen += 1;
    }
    assert_eq!(seen, roles::role_names().count(), "every role has a row");
}
