// The demo page: log in or register over the HTTP API, then chat through the SDK, and the
// social part (social.ts: timeline, profiles, threads; notifications.ts: the badge and its
// panel). No framework: a small store of conversations and plain DOM rendering.
//
// `?transport=websocket` (or `webtransport`) forces one transport. The location hash picks
// the section: `#/chat` (or none), `#/feed`, `#/users/{username}`, `#/posts/{id}`.

import {
  ProtocolError,
  connect,
  directConversationId,
  isRetryable,
  mediaKindOf,
  type HaberciClient,
  type Message,
  type MessageStatus,
  type TransportName,
} from "../sdk/src/index.js";
import { $, ApiError, api, onSignedOut, refreshTokens, saveTokens, tokens, type Tokens } from "./api.js";
import { mediaNode, mediaPreview, rememberUpload } from "./media.js";
import { notificationArrived, refreshUnread, wireNotifications } from "./notifications.js";
import { showSocial, wireSocial, type SocialView } from "./social.js";

// ---------------------------------------------------------------- state

interface Pending {
  clientMsgId: string;
  content: string;
  timestamp: number;
  seq?: number;
  failed?: string;
}

interface Conversation {
  id: string;
  kind: "direct" | "group";
  title: string;
  peerId?: string;
  members: string[];
  unread: number;
  preview: string;
  lastActivity: number;
  messages: Map<number, Message>;
  pending: Map<string, Pending>;
  /** The oldest seq loaded from history, null before the first page. */
  oldest: number | null;
  historyDone: boolean;
  loading: boolean;
  /** Other members' receipt watermarks, from `status` events. */
  watermarks: Map<string, { delivered: number; read: number }>;
  typing: Set<string>;
}

interface ConversationView {
  id: string;
  kind: "direct" | "group";
  peer?: { id: string; username: string; displayName: string } | null;
  name?: string | null;
  unreadCount: number;
  lastMessage?: { content: string; timestamp: string } | null;
  lastActivityAt: string;
}

interface HistoryMessage extends Omit<Message, "timestamp"> {
  timestamp: string;
}

let me: { id: string; username: string; displayName: string } | null = null;
let client: HaberciClient | null = null;
const conversations = new Map<string, Conversation>();
const users = new Map<string, { username: string; displayName: string }>();
const online = new Map<string, boolean>();
let current: string | null = null;

function newConversation(id: string, kind: "direct" | "group", title: string): Conversation {
  return {
    id,
    kind,
    title,
    members: [],
    unread: 0,
    preview: "",
    lastActivity: 0,
    messages: new Map(),
    pending: new Map(),
    oldest: null,
    historyDone: false,
    loading: false,
    watermarks: new Map(),
    typing: new Set(),
  };
}

function nameOf(userId: string): string {
  const user = users.get(userId);
  return user ? user.displayName || user.username : userId.slice(0, 8);
}

// ---------------------------------------------------------------- session

async function startSession(): Promise<void> {
  const user = await api<{ id: string; username: string; displayName: string }>("GET", "/v1/me");
  me = { id: user.id, username: user.username, displayName: user.displayName };
  users.set(me.id, { username: me.username, displayName: me.displayName });
  $("me").textContent = `@${me.username}`;
  $("logout").hidden = false;
  $("auth").hidden = true;
  $("app").hidden = false;
  $("social").hidden = false;
  $("tabs").hidden = false;
  $("notif-button").hidden = false;
  await route();
  void refreshUnread().catch(() => {});
  await loadConversations();

  client = await connectWithRetry();
  showConnection(client.state, client.transport, client.fallback);
  client.on("state", ({ state, transport, fallback, error }) => {
    showConnection(state, transport, fallback ?? error?.message);
    // Back after a break: what happened meanwhile.
    if (state === "open") void refreshUnread().catch(() => {});
  });
  client.on("message", onMessage);
  client.on("notification", ({ unreadCount }) => notificationArrived(unreadCount));
  client.on("status", ({ conversationId, userId, delivered, read }) => {
    const conv = conversations.get(conversationId);
    if (!conv || userId === me?.id) return;
    conv.watermarks.set(userId, { delivered, read });
    if (conversationId === current) renderMessages();
  });
  client.on("typing", ({ conversationId, userId, typing }) => {
    const conv = conversations.get(conversationId);
    if (!conv || userId === me?.id) return;
    if (typing) conv.typing.add(userId);
    else conv.typing.delete(userId);
    if (conversationId === current) renderTyping();
  });
  client.on("presence", ({ userId, online: isOnline }) => {
    online.set(userId, isOnline);
    renderList();
    if (current) renderHeader();
  });
  watchPresence();
}

/** The first connection; while the gateway cannot be reached, tried again with backoff. */
async function connectWithRetry(): Promise<HaberciClient> {
  const forced = new URLSearchParams(location.search).get("transport") as TransportName | null;
  for (let delay = 1_000; ; delay = Math.min(delay * 2, 30_000)) {
    try {
      return await connect({
        url: location.origin,
        token: tokens!.accessToken,
        refreshToken: refreshTokens,
        transports: forced ? [forced] : undefined,
      });
    } catch (err) {
      // Refused for good (a revoked session, an old protocol): back to the login form.
      if (err instanceof ProtocolError && !isRetryable(err.code)) throw err;
      showConnection("reconnecting", null, (err as Error).message);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}

function showConnection(state: string, transport: TransportName | null, why?: string): void {
  const badge = $("connection");
  badge.title = why ?? "";
  badge.dataset.state = state;
  badge.dataset.transport = transport ?? "";
  badge.textContent =
    state === "open" ? (transport === "webtransport" ? "WebTransport" : "WebSocket") : state === "closed" ? "offline" : `${state}…`;
}

async function loadConversations(): Promise<void> {
  const page = await api<{ conversations: ConversationView[] }>("GET", "/v1/conversations?limit=100");
  for (const view of page.conversations) {
    let conv = conversations.get(view.id);
    const title = view.kind === "direct" ? view.peer?.displayName || view.peer?.username || "?" : (view.name ?? "group");
    if (!conv) conversations.set(view.id, (conv = newConversation(view.id, view.kind, title)));
    conv.kind = view.kind;
    conv.title = title;
    conv.unread = view.unreadCount;
    conv.preview = view.lastMessage?.content ?? "";
    conv.lastActivity = Date.parse(view.lastActivityAt);
    if (view.peer) {
      conv.peerId = view.peer.id;
      conv.members = [view.peer.id];
      users.set(view.peer.id, { username: view.peer.username, displayName: view.peer.displayName });
    }
  }
  renderList();
}

function watchPresence(): void {
  const ids = new Set<string>();
  for (const conv of conversations.values()) for (const m of conv.members) if (m !== me?.id) ids.add(m);
  client?.watchPresence([...ids]);
}

function onMessage(message: Message): void {
  let conv = conversations.get(message.conversationId);
  if (!conv) {
    // A conversation that began after we loaded the list: its details come from the API.
    const direct = message.recipientId === me?.id || users.has(message.recipientId);
    conv = newConversation(message.conversationId, direct ? "direct" : "group", "…");
    if (direct) conv.peerId = message.senderId === me?.id ? message.recipientId : message.senderId;
    conversations.set(conv.id, conv);
    void loadConversations().then(watchPresence);
  }
  conv.messages.set(message.seq, message);
  for (const p of conv.pending.values()) if (p.seq === message.seq) conv.pending.delete(p.clientMsgId);
  conv.preview = message.type === "text" ? message.content : mediaPreview(message.type, message.media, message.content);
  conv.lastActivity = message.timestamp;
  conv.typing.delete(message.senderId);
  if (message.senderId !== me?.id) {
    if (conv.id === current && chatVisible()) client?.markRead(conv.id, message.seq);
    else conv.unread++;
  }
  renderList();
  if (conv.id === current) {
    renderMessages(true);
    renderTyping();
  }
}

/** What the viewer sees for their own message: from the other members' watermarks. */
function statusOf(conv: Conversation, message: Message): MessageStatus {
  const others = conv.kind === "direct" ? (conv.peerId ? [conv.peerId] : []) : conv.members.filter((m) => m !== me?.id);
  const rank = { sent: 0, delivered: 1, read: 2 } as const;
  let live: MessageStatus = "sent";
  if (others.length) {
    const marks = others.map((m) => conv.watermarks.get(m) ?? { delivered: 0, read: 0 });
    if (marks.every((w) => w.read >= message.seq)) live = "read";
    else if (marks.every((w) => w.delivered >= message.seq)) live = "delivered";
  }
  return rank[live] >= rank[message.status] ? live : message.status;
}

// ---------------------------------------------------------------- rendering

function renderList(): void {
  const list = $("conversations");
  const sorted = [...conversations.values()].sort((a, b) => b.lastActivity - a.lastActivity);
  if (sorted.length === 0) {
    const hint = document.createElement("li");
    hint.className = "hint";
    hint.textContent = "No conversations yet: chat with someone by their username, or create a group.";
    list.replaceChildren(hint);
    return;
  }
  list.replaceChildren(
    ...sorted.map((conv) => {
      const li = document.createElement("li");
      li.dataset.conversation = conv.id;
      li.dataset.title = conv.title;
      if (conv.id === current) li.setAttribute("aria-current", "true");
      const dot = document.createElement("span");
      dot.className = conv.kind === "group" ? "dot group" : "dot";
      if (conv.peerId) dot.dataset.online = String(online.get(conv.peerId) ?? false);
      const text = document.createElement("div");
      text.className = "text";
      const name = document.createElement("div");
      name.className = "name";
      name.textContent = conv.title;
      const preview = document.createElement("div");
      preview.className = "preview";
      preview.textContent = conv.preview;
      text.append(name, preview);
      li.append(dot, text);
      if (conv.unread > 0) {
        const unread = document.createElement("span");
        unread.className = "unread";
        unread.textContent = String(conv.unread);
        li.append(unread);
      }
      li.addEventListener("click", () => void openConversation(conv.id));
      return li;
    }),
  );
}

function renderHeader(): void {
  const conv = current ? conversations.get(current) : undefined;
  if (!conv) return;
  $("chat-title").textContent = conv.title;
  const dot = $("chat-dot");
  dot.className = conv.kind === "group" ? "dot group" : "dot";
  if (conv.kind === "direct" && conv.peerId) {
    const isOnline = online.get(conv.peerId) ?? false;
    dot.dataset.online = String(isOnline);
    $("chat-subtitle").textContent = isOnline ? "online" : "offline";
  } else {
    delete dot.dataset.online;
    $("chat-subtitle").textContent = `${conv.members.length} members`;
  }
}

const MARKS: Record<MessageStatus | "pending" | "failed", string> = {
  pending: "🕓",
  failed: "⚠",
  sent: "✓",
  delivered: "✓✓",
  read: "✓✓",
};

function messageItem(
  conv: Conversation,
  m: Pick<Message, "content" | "timestamp" | "senderId"> & Partial<Pick<Message, "seq" | "type" | "media">>,
  status: keyof typeof MARKS,
): HTMLLIElement {
  const li = document.createElement("li");
  const mine = m.senderId === me?.id;
  li.className = mine ? "msg mine" : "msg";
  if (m.seq) li.dataset.seq = String(m.seq);
  if (mine) li.dataset.status = status;
  if (conv.kind === "group" && !mine) {
    const sender = document.createElement("div");
    sender.className = "sender";
    sender.textContent = nameOf(m.senderId);
    li.append(sender);
  }
  const body = document.createElement("div");
  body.className = "body";
  body.textContent = m.content;
  if (m.media && m.type && m.type !== "text" && client) {
    li.classList.add("has-media");
    li.append(mediaNode(client, m.type, m.media));
    body.hidden = !m.content;
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = new Date(m.timestamp).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (mine) {
    const mark = document.createElement("span");
    mark.className = "mark";
    mark.textContent = MARKS[status];
    mark.title = status;
    meta.append(mark);
  }
  li.append(body, meta);
  return li;
}

function renderMessages(stickToBottom = false): void {
  const conv = current ? conversations.get(current) : undefined;
  if (!conv) return;
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const items = [...conv.messages.values()].sort((a, b) => a.seq - b.seq).map((m) => messageItem(conv, m, statusOf(conv, m)));
  for (const p of conv.pending.values()) {
    if (p.seq !== undefined && conv.messages.has(p.seq)) continue;
    const status = p.failed ? "failed" : p.seq !== undefined ? "sent" : "pending";
    const li = messageItem(conv, { content: p.content, timestamp: p.timestamp, seq: p.seq, senderId: me!.id }, status);
    if (p.failed) li.title = p.failed;
    items.push(li);
  }
  $("message-list").replaceChildren(...items);
  $("older").hidden = conv.historyDone || conv.oldest === null;
  if (stickToBottom ? atBottom || conv.pending.size > 0 : false) box.scrollTop = box.scrollHeight;
}

function renderTyping(): void {
  const conv = current ? conversations.get(current) : undefined;
  const names = conv ? [...conv.typing].map(nameOf) : [];
  $("typing").textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
}

// ---------------------------------------------------------------- actions

async function openConversation(id: string): Promise<void> {
  const conv = conversations.get(id);
  if (!conv) return;
  current = id;
  $("app").dataset.view = "chat";
  $("chat-empty").hidden = true;
  $("chat-view").hidden = false;
  renderHeader();
  renderTyping();
  renderList();
  renderMessages();
  if (conv.oldest === null) await loadOlder(conv);
  if (conv.kind === "group" && conv.members.length === 0) await loadGroup(conv);
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
  markSeen(conv);
  $("text").focus();
}

/** The open conversation is visible: everything in it is read. */
function markSeen(conv: Conversation): void {
  const seqs = [...conv.messages.keys()];
  if (seqs.length) client?.markRead(conv.id, Math.max(...seqs));
  conv.unread = 0;
  renderList();
}

async function loadOlder(conv: Conversation): Promise<void> {
  if (conv.loading || conv.historyDone) return;
  conv.loading = true;
  try {
    const before = conv.oldest !== null ? `&before=${conv.oldest}` : "";
    const page = await api<{ messages: HistoryMessage[]; nextBefore: number | null }>(
      "GET",
      `/v1/conversations/${conv.id}/messages?limit=50${before}`,
    );
    for (const m of page.messages) {
      if (!conv.messages.has(m.seq)) conv.messages.set(m.seq, { ...m, timestamp: Date.parse(m.timestamp) });
      conv.oldest = Math.min(conv.oldest ?? m.seq, m.seq);
    }
    conv.oldest ??= 0;
    conv.historyDone = page.nextBefore === null;
  } catch (err) {
    // A conversation we are about to start has no history yet (404 until its first message).
    if (!(err instanceof ApiError && err.status === 404)) throw err;
    conv.oldest = 0;
    conv.historyDone = true;
  } finally {
    conv.loading = false;
  }
  if (conv.id === current) {
    const box = $("messages");
    const fromBottom = box.scrollHeight - box.scrollTop;
    renderMessages();
    box.scrollTop = box.scrollHeight - fromBottom;
  }
}

async function loadGroup(conv: Conversation): Promise<void> {
  const group = await api<{ members: { userId: string; username: string; displayName: string }[] }>("GET", `/v1/groups/${conv.id}`);
  conv.members = group.members.map((m) => m.userId);
  for (const m of group.members) users.set(m.userId, { username: m.username, displayName: m.displayName });
  watchPresence();
  if (conv.id === current) {
    renderHeader();
    renderMessages();
  }
}

async function lookup(username: string): Promise<string> {
  const profile = await api<{ id: string; username: string; displayName: string }>("GET", `/v1/users/${encodeURIComponent(username)}`).catch(
    (err: Error) => {
      throw new Error(err instanceof ApiError && err.status === 404 ? `no user called ${username}` : err.message);
    },
  );
  users.set(profile.id, { username: profile.username, displayName: profile.displayName });
  return profile.id;
}

async function startChat(username: string): Promise<void> {
  const peerId = await lookup(username);
  if (peerId === me!.id) throw new Error("that is you");
  const id = await directConversationId(me!.id, peerId);
  if (!conversations.has(id)) {
    // Not in my list: it has no messages yet (the first one creates it), so no history.
    const conv = newConversation(id, "direct", nameOf(peerId));
    conv.oldest = 0;
    conv.historyDone = true;
    conv.peerId = peerId;
    conv.members = [peerId];
    conv.lastActivity = Date.now();
    conversations.set(id, conv);
    watchPresence();
  }
  await openConversation(id);
}

async function createGroup(name: string, memberNames: string[]): Promise<void> {
  const memberIds = await Promise.all(memberNames.map(lookup));
  const group = await api<{ id: string; name: string; members: { userId: string }[] }>("POST", "/v1/groups", { name, memberIds });
  const conv = newConversation(group.id, "group", group.name);
  conv.members = group.members.map((m) => m.userId);
  conv.lastActivity = Date.now();
  conversations.set(group.id, conv);
  watchPresence();
  await openConversation(group.id);
}

function sendText(text: string): void {
  const conv = current ? conversations.get(current) : undefined;
  if (!conv || !client || !text.trim()) return;
  const recipient = conv.kind === "direct" ? { userId: conv.peerId! } : { groupId: conv.id };
  const clientMsgId = crypto.randomUUID();
  const pending: Pending = { clientMsgId, content: text, timestamp: Date.now() };
  conv.pending.set(clientMsgId, pending);
  client.typing(conv.id, false);
  client.send(recipient, text, "text", { clientMsgId }).then(
    (sent) => {
      pending.seq = sent.seq;
      if (conv.messages.has(sent.seq)) conv.pending.delete(clientMsgId);
      if (conv.id === current) renderMessages(true);
    },
    (err: Error) => {
      pending.failed = err.message;
      if (conv.id === current) renderMessages(true);
    },
  );
  renderMessages(true);
}

/** Uploads a picked file and sends it as a message of its kind (image, video, audio, file). */
function sendFile(file: File): void {
  const conv = current ? conversations.get(current) : undefined;
  if (!conv || !client) return;
  const recipient = conv.kind === "direct" ? { userId: conv.peerId! } : { groupId: conv.id };
  const clientMsgId = crypto.randomUUID();
  const pending: Pending = { clientMsgId, content: `📎 ${file.name}: uploading…`, timestamp: Date.now() };
  conv.pending.set(clientMsgId, pending);
  const session = client;
  session
    .uploadMedia(file, { kind: mediaKindOf(file.type), filename: file.name })
    .then((view) => {
      rememberUpload(view);
      pending.content = `📎 ${file.name}`;
      if (conv.id === current) renderMessages(true);
      return session.sendMedia(recipient, view, "", { clientMsgId });
    })
    .then(
      (sent) => {
        pending.seq = sent.seq;
        if (conv.messages.has(sent.seq)) conv.pending.delete(clientMsgId);
        if (conv.id === current) renderMessages(true);
      },
      (err: Error) => {
        pending.failed = err.message;
        pending.content = `📎 ${file.name}: ${err.message}`;
        if (conv.id === current) renderMessages(true);
      },
    );
  renderMessages(true);
}

function logout(): void {
  if (tokens) void api("POST", "/v1/auth/logout", { refreshToken: tokens.refreshToken }).catch(() => {});
  saveTokens(null);
  location.reload();
}

// ---------------------------------------------------------------- wiring

function wire(): void {
  const form = $<HTMLFormElement>("auth-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const action = ((event as SubmitEvent).submitter as HTMLButtonElement | null)?.value ?? "login";
    const data = new FormData(form);
    const username = String(data.get("username")).trim();
    const password = String(data.get("password"));
    $("auth-error").textContent = "";
    const request =
      action === "register"
        ? api<{ tokens: Tokens }>("POST", "/v1/auth/register", {
            username,
            password,
            displayName: String(data.get("displayName")).trim() || username,
            email: String(data.get("email")).trim() || `${username.toLowerCase()}@example.com`,
          }).then((r) => r.tokens)
        : api<Tokens>("POST", "/v1/auth/login", { usernameOrEmail: username, password });
    request
      .then((next) => {
        saveTokens(next);
        return startSession();
      })
      .catch((err: Error) => showLogin(err.message));
  });

  const sidebarError = (err: Error) => {
    $("sidebar-error").textContent = err.message;
  };
  const chatForm = $<HTMLFormElement>("new-chat");
  chatForm.addEventListener("submit", (event) => {
    event.preventDefault();
    $("sidebar-error").textContent = "";
    const input = chatForm.elements.namedItem("username") as HTMLInputElement;
    startChat(input.value.trim()).then(() => (input.value = ""), sidebarError);
  });
  const groupForm = $<HTMLFormElement>("new-group");
  groupForm.addEventListener("submit", (event) => {
    event.preventDefault();
    $("sidebar-error").textContent = "";
    const name = (groupForm.elements.namedItem("name") as HTMLInputElement).value.trim();
    const members = (groupForm.elements.namedItem("members") as HTMLInputElement).value
      .split(/[\s,]+/)
      .map((s) => s.trim())
      .filter(Boolean);
    createGroup(name, members).then(() => groupForm.reset(), sidebarError);
  });

  const text = $<HTMLInputElement>("text");
  let stopTyping: ReturnType<typeof setTimeout> | undefined;
  text.addEventListener("input", () => {
    if (!current || !client) return;
    const id = current;
    client.typing(id, text.value.length > 0);
    clearTimeout(stopTyping);
    stopTyping = setTimeout(() => client?.typing(id, false), 4_000);
  });
  $<HTMLFormElement>("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(stopTyping);
    sendText(text.value);
    text.value = "";
  });
  const attach = $<HTMLInputElement>("attach");
  attach.addEventListener("change", () => {
    for (const file of attach.files ?? []) sendFile(file);
    attach.value = "";
  });
  $("older").addEventListener("click", () => {
    const conv = current ? conversations.get(current) : undefined;
    if (conv) void loadOlder(conv);
  });
  $("messages").addEventListener("scroll", () => {
    const conv = current ? conversations.get(current) : undefined;
    if (conv && $("messages").scrollTop < 20) void loadOlder(conv);
  });
  $("back").addEventListener("click", () => {
    delete $("app").dataset.view;
  });
  $("logout").addEventListener("click", logout);
  document.addEventListener("visibilitychange", () => {
    const conv = current ? conversations.get(current) : undefined;
    if (conv && chatVisible()) markSeen(conv);
  });
  onSignedOut(logout);
  window.addEventListener("hashchange", () => void route());
  wireNotifications();
  wireSocial({
    me: () => me,
    chatWith: async (username) => {
      location.hash = "#/chat";
      await startChat(username);
    },
  });
}

// ---------------------------------------------------------------- sections

/** The open conversation is on screen: the chat section, in a visible tab. */
function chatVisible(): boolean {
  return document.body.dataset.tab !== "social" && document.visibilityState === "visible";
}

/** The section and view the location hash names. */
function viewOf(hash: string): SocialView | null {
  const [, section = "", arg] = hash.split("/");
  if (section === "feed") return { kind: "home" };
  if (section === "users" && arg) return { kind: "profile", username: decodeURIComponent(arg) };
  if (section === "posts" && arg) return { kind: "thread", postId: decodeURIComponent(arg) };
  return null;
}

async function route(): Promise<void> {
  if (!me) return;
  const view = viewOf(location.hash);
  document.body.dataset.tab = view ? "social" : "chat";
  $("tab-chat").setAttribute("aria-current", String(!view));
  $("tab-feed").setAttribute("aria-current", String(view !== null));
  if (view) return showSocial(view);
  const conv = current ? conversations.get(current) : undefined;
  if (conv && chatVisible()) markSeen(conv);
}

function showLogin(message = ""): void {
  $("app").hidden = true;
  $("social").hidden = true;
  $("tabs").hidden = true;
  $("notif-button").hidden = true;
  $("notif-panel").hidden = true;
  $("logout").hidden = true;
  $("me").textContent = "";
  $("auth").hidden = false;
  $("auth-error").textContent = message;
}

wire();
if (tokens) {
  startSession().catch((err: Error) => {
    // The stored session is gone (logged out elsewhere, expired refresh token): log in again.
    saveTokens(null);
    showLogin(err.message);
  });
} else {
  showLogin();
}
