use crate::conformance;
