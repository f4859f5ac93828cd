//! Change chunks framed by hand, in ways automerge's own writer never
//! frames them, to hold the relay and the phones to what they do with
//! them. Shared by the core's tests and the relay's (`#[path]`).

/// Add an author to a change body (automerge writes one only in an
/// actor's first change, and Handoff never sets one).
pub fn add_author(body: &mut Vec<u8>, author: &[u8]) {
    /// automerge's footer kind for an author.
    const AUTHOR: u64 = 1;
    put_uleb(body, AUTHOR);
    put_uleb(body, author.len() as u64);
    body.extend_from_slice(author);
}

/// A change chunk put together again after `edit` changed its body (what
/// follows the magic bytes, checksum, chunk type and length), with its
/// length and checksum made right: automerge parses it as well formed.
pub fn reframed(bytes: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let (len, at) = uleb(&bytes[9..]);
    let mut body = bytes[9 + at..9 + at + len as usize].to_vec();
    edit(&mut body);
    let mut head = vec![bytes[8]];
    put_uleb(&mut head, body.len() as u64);
    let hash = Sha256::new()
        .chain_update(&head)
        .chain_update(&body)
        .finalize();
    let mut out = bytes[..4].to_vec();
    out.extend_from_slice(&hash[..4]);
    out.extend(head);
    out.extend(body);
    out
}

/// A LEB128 number and how many bytes it took.
fn uleb(bytes: &[u8]) -> (u64, usize) {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("a LEB128 number runs past the end");
}

fn put_uleb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let b = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Where a change body's list of other actors is: its count's first
/// byte, the count, the count's end (where the entries start), and the
/// list's end.
fn other_actors(body: &[u8]) -> (usize, u64, usize, usize) {
    let mut at = 0;
    let next = |at: &mut usize| {
        let (v, n) = uleb(&body[*at..]);
        *at += n;
        v
    };
    let deps = next(&mut at);
    at += 32 * deps as usize;
    let own = next(&mut at);
    at += own as usize;
    next(&mut at); // seq
    next(&mut at); // start op
    next(&mut at); // time (signed; the same length rule)
    let message = next(&mut at);
    at += message as usize;
    let count_at = at;
    let count = next(&mut at);
    let count_end = at;
    for _ in 0..count {
        let len = next(&mut at);
        at += len as usize;
    }
    (count_at, count, count_end, at)
}

/// Add `actor` to the end of a change body's list of other actors (one
/// no operation of the change refers to).
pub fn name_another_actor(body: &mut Vec<u8>, actor: &[u8]) {
    let (count_at, count, count_end, end) = other_actors(body);
    let mut entry = Vec::new();
    put_uleb(&mut entry, actor.len() as u64);
    entry.extend_from_slice(actor);
    body.splice(end..end, entry);
    let mut new_count = Vec::new();
    put_uleb(&mut new_count, count + 1);
    body.splice(count_at..count_end, new_count);
}

/// Empty a change body's list of other actors, though its operations
/// name them (by their place in that list).
pub fn forget_other_actors(body: &mut Vec<u8>) {
    let (count_at, _, _, end) = other_actors(body);
    body.splice(count_at..end, [0]);
}
