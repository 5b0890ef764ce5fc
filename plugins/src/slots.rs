//! Per-request state private to one plugin instance: a typed [`Slot`] handed out when the
//! configuration is compiled, and the request's [`Slots`], which allocate nothing until a
//! plugin stores something (a request that uses no stateful plugin never allocates).

use std::any::Any;
use std::marker::PhantomData;

/// A plugin instance's key into every request's [`Slots`], holding a `T`.
pub struct Slot<T> {
    index: usize,
    kind: PhantomData<fn() -> T>,
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Slot<T> {}

impl<T> std::fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({})", self.index)
    }
}

/// Hands out slots while a configuration compiles. Global instances take theirs first, and
/// each route continues from there, so the slots of one route's chain never collide and stay
/// few.
#[derive(Debug, Clone, Default)]
pub struct SlotAllocator {
    next: usize,
}

impl SlotAllocator {
    /// A new slot for a `T`.
    pub fn claim<T>(&mut self) -> Slot<T> {
        let index = self.next;
        self.next += 1;
        Slot {
            index,
            kind: PhantomData,
        }
    }
}

/// One request's plugin-private values.
#[derive(Default)]
pub struct Slots {
    values: Vec<Option<Box<dyn Any + Send + Sync>>>,
}

impl Slots {
    /// The value in `slot`, if the plugin stored one for this request.
    pub fn get<T: Any + Send + Sync>(&self, slot: Slot<T>) -> Option<&T> {
        self.values.get(slot.index)?.as_ref()?.downcast_ref()
    }

    /// The value in `slot`, mutably.
    pub fn get_mut<T: Any + Send + Sync>(&mut self, slot: Slot<T>) -> Option<&mut T> {
        self.values.get_mut(slot.index)?.as_mut()?.downcast_mut()
    }

    /// Stores `value` in `slot`, replacing what was there.
    pub fn set<T: Any + Send + Sync>(&mut self, slot: Slot<T>, value: T) {
        if self.values.len() <= slot.index {
            self.values.resize_with(slot.index + 1, || None);
        }
        self.values[slot.index] = Some(Box::new(value));
    }

    /// Takes the value out of `slot`.
    pub fn take<T: Any + Send + Sync>(&mut self, slot: Slot<T>) -> Option<T> {
        let value = self.values.get_mut(slot.index)?.take()?;
        value.downcast().ok().map(|b| *b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_hold_typed_values_apart_and_allocate_only_when_used() {
        let mut allocator = SlotAllocator::default();
        let counter: Slot<u32> = allocator.claim();
        let name: Slot<String> = allocator.claim();
        let mut slots = Slots::default();
        assert_eq!(slots.get(counter), None);
        assert_eq!(slots.values.capacity(), 0);
        slots.set(name, "a".to_string());
        assert_eq!(slots.get(counter), None);
        slots.set(counter, 1);
        *slots.get_mut(counter).expect("set") += 1;
        assert_eq!(slots.get(counter), Some(&2));
        assert_eq!(slots.take(name).as_deref(), Some("a"));
        assert_eq!(slots.get(name), None);
    }
}
