//! Reading the few fields we need from AWS's XML answers: STS results and
//! errors, and the XML error documents some endpoints (moto among them)
//! send even for JSON services.

use quick_xml::events::Event;
use quick_xml::Reader;
use zeroize::Zeroizing;

/// The text of the first element named each of `names` (local name, any
/// depth), entities resolved. Values may be secrets (a secret access key,
/// a session token): each is built in a buffer large enough never to be
/// reallocated, and wiped on drop. Err: the text is not well-formed XML.
pub fn fields<const N: usize>(xml: &str, names: [&str; N]) -> Result<[Option<Zeroizing<String>>; N], String> {
    let mut out: [Option<Zeroizing<String>>; N] = std::array::from_fn(|_| None);
    let mut reader = Reader::from_str(xml);
    // The field being read, if any.
    let mut current: Option<usize> = None;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                let name = e.local_name();
                current = names.iter().position(|n| *n == name.into_inner()).filter(|&i| out[i].is_none());
                if let Some(i) = current {
                    out[i] = Some(Zeroizing::new(String::with_capacity(xml.len())));
                }
            }
            Event::End(_) => current = None,
            Event::Empty(e) => {
                let name = e.local_name();
                if let Some(i) = names.iter().position(|n| *n == name.into_inner()) {
                    out[i].get_or_insert_with(|| Zeroizing::new(String::new()));
                }
            }
            Event::Text(t) => {
                if let Some(i) = current {
                    push(&mut out[i], &t);
                }
            }
            Event::CData(t) => {
                if let Some(i) = current {
                    push(&mut out[i], &t);
                }
            }
            Event::GeneralRef(r) => {
                if let Some(i) = current {
                    let resolved = match r.resolve_char_ref().map_err(|e| e.to_string())? {
                        Some(c) => c.to_string(),
                        None => quick_xml::escape::resolve_predefined_entity(&r)
                            .ok_or_else(|| format!("unknown entity &{};", &*r))?
                            .to_string(),
                    };
                    push(&mut out[i], &resolved);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    for v in out.iter_mut().flatten() {
        let trimmed = v.trim();
        if trimmed.len() != v.len() {
            *v = Zeroizing::new(trimmed.to_string());
        }
    }
    Ok(out)
}

fn push(field: &mut Option<Zeroizing<String>>, text: &str) {
    if let Some(s) = field {
        // Capacity is the whole document's length: this never reallocates.
        if s.len() + text.len() <= s.capacity() {
            s.push_str(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_at_any_depth_with_entities_resolved() {
        let xml = r#"<?xml version="1.0"?>
<R xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><A><Code>Bad&amp;Worse</Code>
<Message> a &lt;b&gt; &#x41; <![CDATA[<raw>]]> </Message><Empty/></A></R>"#;
        let [code, message, empty, missing] = fields(xml, ["Code", "Message", "Empty", "Missing"]).unwrap();
        assert_eq!(code.as_deref().map(|s| s.as_str()), Some("Bad&Worse"));
        assert_eq!(message.as_deref().map(|s| s.as_str()), Some("a <b> A <raw>"));
        assert_eq!(empty.as_deref().map(|s| s.as_str()), Some(""));
        assert!(missing.is_none());
    }

    #[test]
    fn malformed_xml_is_an_error() {
        assert!(fields("<a><b></a>", ["b"]).is_err());
        assert!(fields("<a>&bogus;</a>", ["a"]).is_err());
    }
}
