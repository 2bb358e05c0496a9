//! Choosing a server and keeping score of it: the upstream group and its
//! picker (`upstream`, `policy`), each server's state (`server`: health,
//! outlier ejection, in-flight count, connection pool), active health
//! checks (`health`), circuit breakers (`breaker`), retry budgets
//! (`budget`) and concurrency limits (`limit`).

pub mod breaker;
pub mod budget;
pub mod health;
pub mod limit;
pub mod policy;
pub mod server;
pub mod upstream;
