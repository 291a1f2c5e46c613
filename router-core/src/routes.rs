//! Where each address's pushed messages go (R-ID-6), with one writer: the engine
//! thread's [`crate::Dispatch`]. An address may hold several connections; a route
//! moves only when a connection does what the route is for, and a close removes only
//! the routes that connection holds:
//! - `provider`: where the provider last registered or announced (probes, its copy of
//!   a ticket, notices);
//! - `user`: where the user last submitted an RFC (its copy of a ticket, an RFC's
//!   failure).

use crate::{to_wire, Conn};
use std::collections::HashMap;
use yellowstone_engine::Command;
use yellowstone_wire::Address;

/// The route a command moves to its connection (R-ID-6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// A registration or an announce: the provider's route.
    Provider(Address),
    /// An RFC: the user's route.
    User(Address),
}

impl RouteKind {
    /// The route `command` takes (`None`: it moves no route).
    pub fn of(command: &Command) -> Option<RouteKind> {
        match command {
            Command::RegisterProvider { provider, .. }
            | Command::ProviderAnnounce { provider, .. } => {
                Some(RouteKind::Provider(to_wire(*provider)))
            }
            Command::SubmitRfc { user, .. } => Some(RouteKind::User(to_wire(*user))),
            _ => None,
        }
    }
}

/// The routes a closed connection held and gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutesReleased {
    /// It was the provider's route: the provider is unreachable now.
    pub provider: bool,
    /// It was the user's route.
    pub user: bool,
}

/// The route table. Bounded by the connections open (one entry per route a live
/// connection holds; a close removes its entries).
#[derive(Debug, Default, Clone)]
pub struct Routes {
    provider: HashMap<Address, Conn>,
    user: HashMap<Address, Conn>,
}

impl Routes {
    /// The provider route of `address`.
    pub fn provider(&self, address: &Address) -> Option<Conn> {
        self.provider.get(address).copied()
    }

    /// The user route of `address`.
    pub fn user(&self, address: &Address) -> Option<Conn> {
        self.user.get(address).copied()
    }

    /// Where a recipient's frames go (R-ID-6): its route, if a live connection holds it.
    pub fn of(&self, recipient: crate::Recipient) -> Option<Conn> {
        match recipient {
            crate::Recipient::User(address) => self.user(&address),
            crate::Recipient::Provider(address) => self.provider(&address),
            crate::Recipient::ProviderElseUser(address) => {
                self.provider(&address).or_else(|| self.user(&address))
            }
        }
    }

    /// Moves the route `kind` to `conn`.
    pub fn take(&mut self, kind: RouteKind, conn: Conn) {
        match kind {
            RouteKind::Provider(address) => self.provider.insert(address, conn),
            RouteKind::User(address) => self.user.insert(address, conn),
        };
    }

    /// Removes the routes of `address` that point at `conn`, and only those: a newer
    /// connection of the same address keeps its routes.
    pub fn release(&mut self, address: &Address, conn: Conn) -> RoutesReleased {
        let provider = self.provider.get(address) == Some(&conn);
        if provider {
            self.provider.remove(address);
        }
        let user = self.user.get(address) == Some(&conn);
        if user {
            self.user.remove(address);
        }
        debug_assert!(self.provider(address) != Some(conn));
        debug_assert!(self.user(address) != Some(conn));
        RoutesReleased { provider, user }
    }

    /// Routes held, provider and user.
    pub fn len(&self) -> usize {
        self.provider.len() + self.user.len()
    }

    /// Whether no route is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_id_6_a_close_releases_only_the_routes_its_connection_holds() {
        let mut routes = Routes::default();
        let address = Address([7; 20]);
        let (a, b) = (Conn(1), Conn(2));
        routes.take(RouteKind::Provider(address), a);
        routes.take(RouteKind::User(address), a);
        // B took the provider route (an announce), A keeps the user route.
        routes.take(RouteKind::Provider(address), b);
        let released = routes.release(&address, a);
        assert_eq!(
            released,
            RoutesReleased {
                provider: false,
                user: true
            }
        );
        assert_eq!(routes.provider(&address), Some(b));
        assert_eq!(routes.user(&address), None);
        let released = routes.release(&address, b);
        assert!(released.provider);
        assert!(routes.is_empty());
    }
}
