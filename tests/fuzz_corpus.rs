//! The fuzz targets' corpus (`fuzz/corpus/<target>/`) on stable Rust: every seed, and a fixed
//! number of deterministic mutations of each (byte flips, deletions, insertions of the tokens
//! request smuggling is made of), through the same entry points the libFuzzer targets call
//! (`egret::fuzzing`). A panic fails the test; so does any request egret's own HTTP/1 loop
//! and hyper read differently (the differential check). Crashes found by `cargo fuzz` are
//! added to the corpus, so they stay fixed.

use std::path::Path;

/// Mutations per seed (bounded: the whole test takes a few seconds).
const MUTATIONS: usize = 400;

/// Pieces that change how HTTP/1 is framed or routed.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b"\0",
    b"\x7f",
    b"\xff",
    b"Content-Length: 0\r\n",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Host: other.test\r\n",
    b"Connection: close\r\n",
    b"Connection: upgrade\r\n",
    b"Expect: 100-continue\r\n",
    b" HTTP/1.0",
    b"http://",
    b"@",
    b"?",
    b"%",
    b"(",
    b")",
    b"{",
    b"}",
];

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(v.len() + 1);
        match rng.below(4) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(v.len());
                v.drain(at.min(end)..end);
            }
            _ => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
        }
    }
    v
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let data = std::fs::read(e.path()).expect("read a corpus file");
            (name, data)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// Runs `f` on every seed of `target` and on `mutations` mutations of each.
fn run(target: &str, mutations: usize, mut f: impl FnMut(&[u8])) -> usize {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut n = 0;
    for (_, seed) in corpus(target) {
        f(&seed);
        n += 1;
        for _ in 0..mutations {
            f(&mutate(&seed, &mut rng));
            n += 1;
        }
    }
    n
}

#[test]
fn request_heads_never_panic() {
    assert!(run("request_head", MUTATIONS, egret::fuzzing::request_head) > 1000);
}

#[test]
fn response_heads_never_panic() {
    assert!(run("response_head", MUTATIONS, egret::fuzzing::response_head) > 1000);
}

#[test]
fn client_hellos_never_panic() {
    assert!(run("client_hello", MUTATIONS, egret::fuzzing::client_hello) > 1000);
}

#[test]
fn log_formats_never_panic() {
    assert!(run("log_format", MUTATIONS, egret::fuzzing::log_format) > 1000);
}

#[test]
fn manifests_never_panic() {
    // YAML loading is the slowest target: fewer mutations.
    assert!(run("config", 40, egret::fuzzing::config) > 100);
}

#[test]
fn egrets_http1_loop_and_hyper_agree_on_every_request_the_loop_takes() {
    let mut disagreements = Vec::new();
    let mut compared = 0;
    let n = run(
        "differential",
        MUTATIONS,
        |data| match egret::fuzzing::differential(data) {
            Ok(true) => compared += 1,
            Ok(false) => {}
            Err(e) => disagreements.push(format!("{:?}\n{e}", String::from_utf8_lossy(data))),
        },
    );
    eprintln!("differential: {n} inputs, {compared} taken by egret's loop and compared with hyper");
    assert!(n > 1000 && compared > n / 10, "{compared} of {n} compared");
    assert!(
        disagreements.is_empty(),
        "{} of {n} inputs read differently:\n{}",
        disagreements.len(),
        disagreements
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

/// The differential check can fail: against a second parser that rejects the request, or
/// reads one header differently, it reports the disagreement; against hyper it passes, and a
/// request the loop hands over (it has a body) is never compared.
#[test]
fn the_differential_check_reports_a_disagreement() {
    let req: &[u8] = b"GET /a HTTP/1.1\r\nHost: a.test\r\nX-One: 1\r\n\r\n";
    assert_eq!(egret::fuzzing::differential(req), Ok(true));
    let rejected = egret::fuzzing::differential_against(req, |_| None);
    assert!(
        rejected.as_ref().is_err_and(|e| e.contains("rejects")),
        "{rejected:?}"
    );
    let seen = |x_one: &[u8]| egret::fuzzing::Seen {
        method: "GET".into(),
        target: "/a".into(),
        version: http::Version::HTTP_11,
        headers: vec![
            ("host".into(), b"a.test".to_vec()),
            ("x-one".into(), x_one.to_vec()),
        ],
        bodiless: true,
    };
    let differs = egret::fuzzing::differential_against(req, |_| Some(seen(b"2")));
    assert!(
        differs.as_ref().is_err_and(|e| e.contains("differently")),
        "{differs:?}"
    );
    // The same fields with the right value agree: the comparison is of content.
    let agrees = egret::fuzzing::differential_against(req, |_| Some(seen(b"1")));
    assert_eq!(agrees, Ok(true));
    assert_eq!(
        egret::fuzzing::differential_against(
            b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\n\r\nx",
            |_| None
        ),
        Ok(false),
        "a request with a body is hyper's alone"
    );
}
