//! Quota windows (issue 22): the hourly, daily, monthly or fixed-length limits of the upstream's plan.

pub mod window;
