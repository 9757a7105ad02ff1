//! The generated social graph, as pure functions of the sizes and a seed: who follows whom,
//! who wrote which post, and which graph slots the registered (driven) users take. Nothing
//! here touches a database, so the shape of the data is unit-tested; `data` writes it.
//!
//! Nodes are numbered `0..users`. Node `i` has `followers(i)` followers:
//!
//! - the first `celebrities` nodes: from 80 % down to 52 % of all users (at 100,000 users:
//!   80,000 … 52,000 followers), whose posts the feed merges at read time;
//! - every other node `i`, rank `k = i − celebrities + 1`: `top × k^−0.6` (at least 1), where
//!   `top` is 9.5 % of the users but never more than 95 % of the fan-out limit (at 100,000
//!   users: 9,500, 6,267, 4,914, … 38 at rank 10,000): a power law, total ≈ 27 follows per
//!   user.
//!
//! Follower `j` of node `i` is `i + 1 + (j·p + s) mod (n − 1)` (mod n), with `p` a prime larger
//! than `n` and `s` a per-node offset: distinct for every `j < n − 1` and never `i` itself.

use uuid::Uuid;

/// Primes above 1,000,000: a stride coprime to every `n − 1` with `n ≤ MAX_USERS`.
const STRIDES: [u64; 8] = [
    1_000_003, 1_000_033, 1_000_037, 1_000_039, 1_000_081, 1_000_099, 1_000_117, 1_000_121,
];
/// The largest graph the follower formula keeps distinct.
pub const MAX_USERS: usize = 1_000_000;
/// Exponent of the power law of followers.
const FOLLOWER_EXPONENT: f64 = 0.6;
/// Posts that are reposts of an earlier post, in percent.
const REPOST_PERCENT: u64 = 3;
/// Original posts visible to followers only, in percent.
const FOLLOWERS_ONLY_PERCENT: u64 = 5;
/// Generated (not driven) accounts that are private, in percent.
const PRIVATE_PERCENT: u64 = 1;
/// Generated posts are spread over this many days before the generation.
pub const POST_DAYS: u64 = 30;

/// SplitMix64: small, fast, seedable; generated data needs no cryptography.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n) (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// `true` with probability `percent` %.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// SplitMix64's finalizer: a well-spread hash of `x`.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The sizes of a graph and where the driven users sit in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub users: usize,
    pub celebrities: usize,
    /// Driven accounts right after the celebrities: the largest fanned-out authors.
    pub fanout_authors: usize,
    /// Followers below which posts are fanned out (`HABERCI_FEED_FANOUT_LIMIT`).
    pub fanout_limit: usize,
    /// The node of driven user `k`.
    pub drivers: Vec<usize>,
}

/// What a driven user is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Celebrity,
    FanoutAuthor,
    Reader,
}

impl Layout {
    /// `drivers` registered users: the first are the celebrities, then the fan-out authors,
    /// and the rest (readers) spread evenly over the remaining ranks, so their followings and
    /// followers are those of ordinary users of every popularity.
    pub fn new(
        users: usize,
        celebrities: usize,
        fanout_authors: usize,
        fanout_limit: usize,
        drivers: usize,
    ) -> anyhow::Result<Layout> {
        let fixed = celebrities + fanout_authors;
        if !(10..=MAX_USERS).contains(&users) {
            anyhow::bail!("--users must be between 10 and {MAX_USERS}");
        }
        if drivers <= fixed || drivers * 2 > users {
            anyhow::bail!(
                "--drivers must be more than --celebrities + --fanout-authors ({fixed}) and at most half of --users"
            );
        }
        let readers = drivers - fixed;
        let span = users - fixed;
        let drivers = (0..drivers)
            .map(|k| {
                if k < fixed {
                    k
                } else {
                    fixed + (k - fixed) * span / readers
                }
            })
            .collect();
        Ok(Layout {
            users,
            celebrities,
            fanout_authors,
            fanout_limit,
            drivers,
        })
    }

    pub fn role(&self, driver: usize) -> Role {
        if driver < self.celebrities {
            Role::Celebrity
        } else if driver < self.celebrities + self.fanout_authors {
            Role::FanoutAuthor
        } else {
            Role::Reader
        }
    }

    /// The follower count of the first non-celebrity node.
    fn top(&self) -> f64 {
        (0.095 * self.users as f64).min(0.95 * self.fanout_limit as f64)
    }

    /// How many followers node `i` gets.
    pub fn followers(&self, i: usize) -> usize {
        let n = self.users as f64;
        let count = if i < self.celebrities {
            let step = 0.28 / (self.celebrities.max(2) - 1) as f64;
            (0.80 - step * i as f64) * n
        } else {
            let rank = (i - self.celebrities + 1) as f64;
            (self.top() * rank.powf(-FOLLOWER_EXPONENT)).max(1.0)
        };
        (count as usize).min(self.users - 1)
    }

    /// The `j`-th follower of node `i` (`j < followers(i)`).
    pub fn follower(&self, i: usize, j: usize) -> usize {
        let others = (self.users - 1) as u64;
        let stride = STRIDES[i % STRIDES.len()] % others;
        let offset = mix(i as u64 ^ 0x5EED) % others;
        let step = (j as u64 * stride + offset) % others;
        (i + 1 + step as usize) % self.users
    }

    /// Whether generated node `i` is a private account (never a driven one).
    pub fn private(&self, i: usize) -> bool {
        !self.drivers.contains(&i) && mix(i as u64 ^ 0x9A1) % 100 < PRIVATE_PERCENT
    }

    /// Total follow rows.
    pub fn follow_rows(&self) -> u64 {
        (0..self.users).map(|i| self.followers(i) as u64).sum()
    }
}

/// One generated post.
#[derive(Clone, Debug, PartialEq)]
pub struct PostPlan {
    pub author: usize,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The index of the reposted post; content is empty then.
    pub repost_of: Option<usize>,
    pub followers_only: bool,
}

/// The author of a post: `floor(n · u²)`, so node `i` writes ∝ `i^−½` of them (at 1,000,000
/// posts over 100,000 users: ≈ 3,200 for node 0, ≈ 5 for the last).
pub fn author(rng: &mut Rng, users: usize) -> usize {
    let u = rng.unit();
    ((users as f64 * u * u) as usize).min(users - 1)
}

/// Generates the posts in order: post `m` of `total` is written between `start_ms` and
/// `start_ms + span_ms` in index order, so a repost is always newer than its original.
pub struct Posts {
    rng: Rng,
    users: usize,
    total: usize,
    start_ms: u64,
    span_ms: u64,
    /// Per earlier post: its author, and whether it is a repost (which cannot be reposted).
    authors: Vec<usize>,
    is_repost: Vec<bool>,
    /// (author, original) pairs already reposted: one repost per user and post.
    taken: std::collections::HashSet<(usize, usize)>,
}

impl Posts {
    pub fn new(seed: u64, users: usize, total: usize, start_ms: u64, span_ms: u64) -> Posts {
        Posts {
            rng: Rng::new(seed),
            users,
            total,
            start_ms,
            span_ms,
            authors: Vec::with_capacity(total),
            is_repost: Vec::with_capacity(total),
            taken: std::collections::HashSet::new(),
        }
    }

    /// The next post, or `None` after `total`.
    pub fn next_post(&mut self) -> Option<PostPlan> {
        let m = self.authors.len();
        if m >= self.total {
            return None;
        }
        let rng = &mut self.rng;
        let author = author(rng, self.users);
        let at_ms = self.start_ms + (m as u64 * self.span_ms) / self.total as u64;
        let mut repost_of = None;
        if m > 0 && rng.percent(REPOST_PERCENT) {
            let original = rng.below(m as u64) as usize;
            if !self.is_repost[original]
                && self.authors[original] != author
                && self.taken.insert((author, original))
            {
                repost_of = Some(original);
            }
        }
        let followers_only = repost_of.is_none() && rng.percent(FOLLOWERS_ONLY_PERCENT);
        self.authors.push(author);
        self.is_repost.push(repost_of.is_some());
        Some(PostPlan {
            author,
            at_ms,
            repost_of,
            followers_only,
        })
    }

    /// Random bits for ids and texts, from the same seeded stream.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}

/// A UUIDv7 at `ms` with random bits from `rng` (the backend's post ids are UUIDv7 and their
/// timelines score posts by its milliseconds).
pub fn uuid_v7(ms: u64, rng: &mut Rng) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6..14].copy_from_slice(&rng.next_u64().to_be_bytes());
    bytes[14..].copy_from_slice(&rng.next_u64().to_be_bytes()[..2]);
    bytes[6] = 0x70 | (bytes[6] & 0x0F);
    bytes[8] = 0x80 | (bytes[8] & 0x3F);
    Uuid::from_bytes(bytes)
}

const WORDS: [&str; 32] = [
    "bugün",
    "İstanbul",
    "hava",
    "çok",
    "güzel",
    "kahve",
    "içtim",
    "maç",
    "akşam",
    "yarın",
    "toplantı",
    "şehir",
    "deniz",
    "kitap",
    "okudum",
    "yeni",
    "proje",
    "başladı",
    "trafik",
    "yoğun",
    "Ankara",
    "İzmir",
    "müzik",
    "konser",
    "harika",
    "ılık",
    "rüzgâr",
    "öğle",
    "yemeği",
    "sahil",
    "yürüyüş",
    "haberler",
];

/// The text of generated post `m`: 8–24 words, no hashtag or mention (those would need rows
/// of their own).
pub fn content(rng: &mut Rng, m: usize) -> String {
    let words = 8 + rng.below(17) as usize;
    let mut text = format!("gönderi {m}:");
    for _ in 0..words {
        text.push(' ');
        text.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    text
}

/// The username of generated node `i`; driven nodes keep their registered names.
pub fn username(i: usize) -> String {
    format!("{USERNAME_PREFIX}{i}")
}

/// Every generated account's username starts with this (and nothing else's does).
pub const USERNAME_PREFIX: &str = "sbench_";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use super::*;

    fn layout(users: usize) -> Layout {
        Layout::new(users, 5, 4, 10_000, 300.min(users / 2)).unwrap()
    }

    #[test]
    fn followers_of_a_node_are_distinct_and_never_itself() {
        let l = layout(2000);
        for i in [0, 1, 7, 999, 1999] {
            let f: HashSet<usize> = (0..l.followers(i)).map(|j| l.follower(i, j)).collect();
            assert_eq!(f.len(), l.followers(i), "node {i}");
            assert!(!f.contains(&i));
            assert!(f.iter().all(|&x| x < 2000));
        }
        // Even every other node at once.
        let all: HashSet<usize> = (0..1999).map(|j| l.follower(3, j)).collect();
        assert_eq!(all.len(), 1999);
    }

    #[test]
    fn the_full_size_graph_has_the_shape_the_brief_asks_for() {
        let l = layout(100_000);
        let celebrities: Vec<usize> = (0..5).map(|i| l.followers(i)).collect();
        assert_eq!(celebrities, vec![80_000, 73_000, 66_000, 59_000, 52_000]);
        assert_eq!(l.followers(5), 9_500);
        assert!(l.followers(6) < 9_500 && l.followers(6) > 6_000);
        assert!((5..100_000).all(|i| l.followers(i) < 10_000 && l.followers(i) >= 1));
        let rows = l.follow_rows();
        assert!((2_000_000..3_500_000).contains(&rows), "{rows}");
    }

    #[test]
    fn drivers_take_the_top_slots_then_spread() {
        let l = Layout::new(1000, 2, 3, 10_000, 10).unwrap();
        assert_eq!(l.drivers, vec![0, 1, 2, 3, 4, 5, 204, 403, 602, 801]);
        assert_eq!(l.role(1), Role::Celebrity);
        assert_eq!(l.role(4), Role::FanoutAuthor);
        assert_eq!(l.role(5), Role::Reader);
        assert!(!l.private(0));
        assert!(Layout::new(1000, 2, 3, 10_000, 5).is_err());
        assert!(Layout::new(100, 2, 3, 10_000, 60).is_err());
    }

    #[test]
    fn posts_lean_to_popular_authors_and_reposts_to_earlier_originals() {
        let total = 20_000;
        let mut generator = Posts::new(15, 2000, total, 1_000, 1_000_000);
        let mut plans = Vec::new();
        while let Some(p) = generator.next_post() {
            plans.push(p);
        }
        assert_eq!(plans.len(), total);
        let is_repost: Vec<bool> = plans.iter().map(|p| p.repost_of.is_some()).collect();
        let authors: Vec<usize> = plans.iter().map(|p| p.author).collect();
        let by_zero = plans.iter().filter(|p| p.author == 0).count();
        let by_last = plans.iter().filter(|p| p.author == 1999).count();
        assert!(by_zero > 5 * by_last.max(1), "{by_zero} vs {by_last}");
        let reposts: Vec<&PostPlan> = plans.iter().filter(|p| p.repost_of.is_some()).collect();
        assert!(
            reposts.len() > 300 && reposts.len() < 900,
            "{}",
            reposts.len()
        );
        for (m, p) in plans.iter().enumerate() {
            if let Some(o) = p.repost_of {
                assert!(o < m && !is_repost[o] && authors[o] != p.author);
                assert!(!p.followers_only);
            }
        }
        assert!(plans.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    }

    #[test]
    fn uuids_are_version_7_at_their_millisecond() {
        let mut rng = Rng::new(1);
        let id = uuid_v7(1_700_000_000_123, &mut rng);
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        assert_eq!((secs, nanos), (1_700_000_000, 123_000_000));
        assert!(uuid_v7(1_700_000_000_124, &mut rng) > id);
    }

    #[test]
    fn contents_fit_a_post() {
        let mut rng = Rng::new(2);
        for m in 0..200 {
            let text = content(&mut rng, m);
            assert!(text.chars().count() <= 1000 && !text.contains('#') && !text.contains('@'));
        }
        assert_eq!(username(42), "sbench_42");
    }
}
