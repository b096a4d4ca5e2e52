//! Tests of the DRS policies.

use super::*;
