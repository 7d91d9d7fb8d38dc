//! Shared benchmark inputs. SKELETON.
