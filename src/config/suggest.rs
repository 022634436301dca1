//! Naming what exists when a name does not: the closest one by edit distance, and the list.

/// `; did you mean "payments"? (routes: payments, orders, web)` for a `name` that is none of `known`
/// (`what` names them): the closest by edit distance when it is close, and the list.
pub fn suggestion(name: &str, known: &[&str], what: &str) -> String {
    let closest = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d);
    let list = if known.is_empty() {
        format!("(no {what})")
    } else {
        format!("({what}: {})", known.join(", "))
    };
    match closest {
        Some((_, k)) => format!("; did you mean {k:?}? {list}"),
        None => format!(" {list}"),
    }
}
