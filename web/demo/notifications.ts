// The notifications badge and its panel. The badge holds one number, the unread count; what
// moves it is kept apart from how it is drawn:
//
// - `notificationArrived(unreadCount)`: live, from the SDK's `notification` event (the
//   realtime protocol's Notification frame, sent when a notification is stored for me);
// - `refreshUnread()`: `GET /v1/notifications/unread-count`, on start, whenever the realtime
//   connection opens (live events are best effort: one missed while disconnected is not
//   replayed), when the page becomes visible again and when the panel opens.
//
// Opening the panel lists the newest notifications and marks them read up to the newest.

import { $, api, el, seg } from "./api.js";

interface ActorRef {
  id: string;
  username: string;
}

interface NotificationView {
  id: string;
  kind: string;
  postId: string | null;
  commentId: string | null;
  actorCount: number;
  actors: ActorRef[];
  unread: boolean;
  at: string;
}

interface NotificationPage {
  notifications: NotificationView[];
  unreadCount: number;
  nextCursor: string | null;
}

let cursor: string | null = null;

function setUnread(count: number): void {
  const unread = Math.max(0, count);
  const badge = $("notif-count");
  badge.textContent = unread > 99 ? "99+" : String(unread);
  badge.dataset.count = String(unread);
  badge.hidden = unread === 0;
  $("notif-button").title = unread ? `${unread} unread notification${unread === 1 ? "" : "s"}` : "Notifications";
}

function panelOpen(): boolean {
  return !$("notif-panel").hidden;
}

/** A live notification, with the unread count after it. */
export function notificationArrived(unreadCount: number): void {
  setUnread(unreadCount);
  // Open: the user is looking at the list, so the new one is shown (and read) at once.
  if (panelOpen()) void loadPanel().catch(showError);
}

/** The count from the server. */
export async function refreshUnread(): Promise<void> {
  const { unreadCount } = await api<{ unreadCount: number }>("GET", "/v1/notifications/unread-count");
  setUnread(unreadCount);
}

const PHRASES: Record<string, string> = {
  follow: "followed you",
  follow_request: "asked to follow you",
  like: "liked your post",
  comment: "commented on your post",
  mention: "mentioned you",
  repost: "reposted your post",
};

function notificationItem(n: NotificationView): HTMLLIElement {
  const li = el("li", n.unread ? "notification unread-item" : "notification");
  li.dataset.kind = n.kind;
  li.dataset.id = n.id;
  const link = el("a");
  const first = n.actors[0]?.username;
  link.href = n.postId ? `#/posts/${seg(n.postId)}` : first ? `#/users/${seg(first)}` : "#/feed";
  const who = el("b", "", first ? `@${first}` : "Someone");
  const others = n.actorCount - 1;
  const rest = others > 0 ? ` and ${others} other${others === 1 ? "" : "s"}` : "";
  link.append(who, `${rest} ${PHRASES[n.kind] ?? n.kind}`);
  const time = el("div", "meta", new Date(n.at).toLocaleString([], { dateStyle: "short", timeStyle: "short" }));
  li.append(link, time);
  li.addEventListener("click", () => closePanel());
  return li;
}

async function loadPanel(more = false): Promise<void> {
  const after = more && cursor ? `&cursor=${seg(cursor)}` : "";
  const page = await api<NotificationPage>("GET", `/v1/notifications?limit=20${after}`);
  cursor = page.nextCursor;
  const list = $("notif-list");
  const items = page.notifications.map(notificationItem);
  if (more) list.append(...items);
  else if (items.length) list.replaceChildren(...items);
  else list.replaceChildren(el("li", "hint", "Nothing yet. Likes, comments, mentions and new followers show up here."));
  $("notif-more").hidden = cursor === null;
  setUnread(page.unreadCount);
  // Seen: everything up to the newest one shown is read now (the items keep their look
  // until the panel is opened again).
  const newest = page.notifications[0];
  if (!more && newest && page.unreadCount > 0) {
    const read = await api<{ unreadCount: number }>("POST", "/v1/notifications/read", { upTo: newest.id });
    setUnread(read.unreadCount);
  }
}

function showError(err: Error): void {
  $("notif-list").replaceChildren(el("li", "error", err.message));
}

function openPanel(): void {
  $("notif-panel").hidden = false;
  $("notif-button").setAttribute("aria-expanded", "true");
  void loadPanel().catch(showError);
}

function closePanel(): void {
  $("notif-panel").hidden = true;
  $("notif-button").setAttribute("aria-expanded", "false");
}

export function wireNotifications(): void {
  $("notif-button").addEventListener("click", () => (panelOpen() ? closePanel() : openPanel()));
  $("notif-close").addEventListener("click", closePanel);
  $("notif-more").addEventListener("click", () => void loadPanel(true).catch(showError));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && panelOpen()) closePanel();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") void refreshUnread().catch(() => {});
  });
}
