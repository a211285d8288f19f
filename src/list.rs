//! Intrusive doubly linked lists of heap metadata records (span descriptors on the
//! centrals' lists, descriptor slabs with free slots). The links live in the records,
//! so a list costs no memory of its own and every operation is O(1).
//!
//! # Invariants
//!
//! - every node on a list is valid while it is on it; `head` is null exactly when
//!   `len == 0`; the head's `prev` is null, and for consecutive nodes `a`, `b`:
//!   `a.next == b` and `b.prev == a`;
//! - a node is on at most one list at a time.

use core::ptr;

/// The link fields a list node carries.
pub(crate) struct Links<T> {
    pub(crate) prev: *mut T,
    pub(crate) next: *mut T,
}

impl<T> Links<T> {
    /// Links of a node on no list.
    pub(crate) const fn new() -> Self {
        Self {
            prev: ptr::null_mut(),
            next: ptr::null_mut(),
        }
    }
}

/// A record that can be put on a [`List`].
///
/// # Safety
///
/// `links(node)` returns a pointer to `node`'s own [`Links`] field, derived from
/// `node` without reading through it.
pub(crate) unsafe trait Node: Sized {
    /// The links of `node`.
    fn links(node: *mut Self) -> *mut Links<Self>;
}

/// An intrusive doubly linked list.
pub(crate) struct List<T: Node> {
    head: *mut T,
    len: usize,
}

// SAFETY: a list is reached only through the lock of the structure that owns it (a
// central, or the page heap for an arena's slabs); the nodes it points to belong to
// that structure while they are on the list.
unsafe impl<T: Node> Send for List<T> {}

impl<T: Node> List<T> {
    /// An empty list.
    pub(crate) const fn new() -> Self {
        Self {
            head: ptr::null_mut(),
            len: 0,
        }
    }

    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The first node, or null.
    pub(crate) fn head(&self) -> *mut T {
        self.head
    }

    /// Pushes `node` at the front.
    ///
    /// # Safety
    ///
    /// `node` is valid, on no list, and reachable only by the list's owner.
    pub(crate) unsafe fn push(&mut self, node: *mut T) {
        // SAFETY: `node` is valid and on no list (caller); the head, if any, is a
        // valid node of this list (invariant).
        unsafe {
            let links = T::links(node);
            (*links).prev = ptr::null_mut();
            (*links).next = self.head;
            if !self.head.is_null() {
                (*T::links(self.head)).prev = node;
            }
        }
        self.head = node;
        self.len += 1;
    }

    /// Unlinks `node`.
    ///
    /// # Safety
    ///
    /// `node` is on this list.
    pub(crate) unsafe fn remove(&mut self, node: *mut T) {
        // SAFETY: `node` is on this list (caller), so its neighbours are valid nodes of
        // this list too (invariant).
        unsafe {
            let links = T::links(node);
            let (prev, next) = ((*links).prev, (*links).next);
            if prev.is_null() {
                self.head = next;
            } else {
                (*T::links(prev)).next = next;
            }
            if !next.is_null() {
                (*T::links(next)).prev = prev;
            }
            *links = Links::new();
        }
        self.len -= 1;
    }

    /// Iterates over the nodes.
    pub(crate) fn iter(&self) -> impl Iterator<Item = *mut T> + '_ {
        let mut cursor = self.head;
        core::iter::from_fn(move || {
            if cursor.is_null() {
                return None;
            }
            let node = cursor;
            // SAFETY: nodes on the list are valid (invariant) and the list is
            // borrowed, so it does not change during the walk.
            cursor = unsafe { (*T::links(node)).next };
            Some(node)
        })
    }
}
