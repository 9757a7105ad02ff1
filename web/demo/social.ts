// The social part of the demo page: the home timeline with a composer, profiles with follow /
// unfollow, and a post's thread with its comments. Plain DOM like the chat; one post may be on
// screen several times (timeline, profile, thread), so a like or a comment updates every copy.
//
// Views are addressed by the location hash (app.ts routes): `#/feed`, `#/users/{username}`,
// `#/posts/{id}`.

import { $, ApiError, api, el, seg } from "./api.js";

interface UserRef {
  id: string;
  username: string;
  displayName: string;
  avatarRef: string | null;
}

interface PostView {
  id: string;
  author: UserRef;
  content: string;
  visibility: "public" | "followers" | "mentioned";
  mediaIds: string[];
  mentions: string[];
  hashtags: string[];
  createdAt: string;
  editedAt: string | null;
  likesCount: number;
  commentsCount: number;
  repostsCount: number;
  liked: boolean;
  reposted: boolean;
  repostOf: PostView | null;
}

interface PostPage {
  posts: PostView[];
  nextCursor: string | null;
}

interface Profile {
  id: string;
  username: string;
  displayName: string;
  bio: string;
  private: boolean;
  followersCount: number;
  followingCount: number;
  postsCount: number;
  relationship: { following: boolean; followedBy: boolean; requested: boolean; muting: boolean };
}

interface CommentView {
  id: string;
  postId: string;
  parentId: string | null;
  author: UserRef;
  content: string;
  createdAt: string;
}

interface Thread {
  post: PostView;
  comments: CommentView[];
  nextCursor: string | null;
}

export type SocialView = { kind: "home" } | { kind: "profile"; username: string } | { kind: "thread"; postId: string };

/** What the social part needs from the page around it. */
export interface SocialHost {
  me(): { username: string } | null;
  /** Opens the chat with a user (the profile's Message button). */
  chatWith(username: string): Promise<void>;
}

let host: SocialHost;
/** The newest copy of every post on screen, by id: what the like button toggles. */
const posts = new Map<string, PostView>();
const cursors = { home: null as string | null, profile: null as string | null, comments: null as string | null };
let profile: Profile | null = null;
let threadPost: string | null = null;
let replyTo: CommentView | null = null;

function showError(err: unknown): void {
  $("view-error").textContent = err instanceof Error ? err.message : String(err);
}

function clearError(): void {
  $("view-error").textContent = "";
}

function when(iso: string): string {
  const date = new Date(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString([], { day: "numeric", month: "short" });
}

/** Text with `@mentions` and `#hashtags` as links, built from text nodes (never HTML). */
function richText(text: string): Node[] {
  const nodes: Node[] = [];
  let last = 0;
  for (const match of text.matchAll(/@([A-Za-z][A-Za-z0-9_]{2,31})\b/g)) {
    if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
    const link = el("a", "mention", match[0]);
    link.href = `#/users/${seg(match[1])}`;
    nodes.push(link);
    last = match.index + match[0].length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

function authorLink(user: UserRef): HTMLAnchorElement {
  const link = el("a", "author", user.displayName || user.username);
  link.href = `#/users/${seg(user.username)}`;
  link.dataset.username = user.username;
  return link;
}

// ---------------------------------------------------------------- posts

function postItem(view: PostView): HTMLLIElement {
  // A repost shows the reposted post, with who reposted it above.
  const post = view.repostOf ?? view;
  posts.set(post.id, post);
  const li = el("li", "post");
  li.dataset.postId = post.id;
  li.dataset.author = post.author.username;
  if (view.repostOf) li.append(el("div", "repost-note", `🔁 ${view.author.displayName || view.author.username} reposted`));
  const head = el("div", "post-head");
  const time = el("a", "time", when(post.createdAt) + (post.editedAt ? " · edited" : ""));
  time.href = `#/posts/${seg(post.id)}`;
  time.title = new Date(post.createdAt).toLocaleString();
  head.append(authorLink(post.author), el("span", "handle", `@${post.author.username}`), time);
  if (post.visibility !== "public") head.append(el("span", "tag", post.visibility));
  const body = el("div", "post-body");
  body.append(...richText(post.content));
  const actions = el("div", "post-actions");
  const like = el("button", "like link");
  like.type = "button";
  like.append(el("span", "heart"), el("span", "like-count"));
  like.addEventListener("click", () => void toggleLike(post.id, like));
  const comment = el("a", "comment");
  comment.href = `#/posts/${seg(post.id)}`;
  comment.append("💬 ", el("span", "comment-count"));
  comment.setAttribute("aria-label", "Comments");
  actions.append(like, comment);
  li.append(head, body, actions);
  fillActions(li, post);
  return li;
}

/** The counts and the like state of one copy of a post. */
function fillActions(li: Element, post: PostView): void {
  const like = li.querySelector<HTMLButtonElement>("button.like")!;
  like.setAttribute("aria-pressed", String(post.liked));
  like.setAttribute("aria-label", post.liked ? "Unlike" : "Like");
  like.querySelector(".heart")!.textContent = post.liked ? "♥" : "♡";
  like.querySelector(".like-count")!.textContent = String(post.likesCount);
  li.querySelector(".comment-count")!.textContent = String(post.commentsCount);
}

/** A post changed: every copy on screen shows it. */
function updatePost(post: PostView): void {
  posts.set(post.id, post);
  for (const li of document.querySelectorAll(`li.post[data-post-id="${post.id}"]`)) fillActions(li, post);
}

async function toggleLike(id: string, button: HTMLButtonElement): Promise<void> {
  const post = posts.get(id);
  if (!post || button.disabled) return;
  button.disabled = true;
  clearError();
  try {
    updatePost(await api<PostView>(post.liked ? "DELETE" : "POST", `/v1/posts/${seg(id)}/like`));
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
}

function renderPosts(list: HTMLElement, page: PostView[], more: boolean, empty: string): void {
  const items = page.map(postItem);
  if (more) list.append(...items);
  else if (items.length) list.replaceChildren(...items);
  else list.replaceChildren(el("li", "hint", empty));
}

// ---------------------------------------------------------------- home

async function loadHome(more = false): Promise<void> {
  const after = more && cursors.home ? `&cursor=${seg(cursors.home)}` : "";
  const page = await api<PostPage>("GET", `/v1/feed/home?limit=20${after}`);
  cursors.home = page.nextCursor;
  renderPosts($("feed"), page.posts, more, "Nothing here yet: post something, or find people to follow.");
  $("feed-more").hidden = cursors.home === null;
}

async function publish(form: HTMLFormElement): Promise<void> {
  const text = $<HTMLTextAreaElement>("post-text");
  const visibility = $<HTMLSelectElement>("post-visibility").value;
  const post = await api<PostView>("POST", "/v1/posts", { content: text.value, visibility });
  // The timeline gets it from the fan-out a moment later; mine shows it now.
  const feed = $("feed");
  feed.querySelector("li.hint")?.remove();
  if (!feed.querySelector(`li.post[data-post-id="${post.id}"]`)) feed.prepend(postItem(post));
  form.reset();
}

// ---------------------------------------------------------------- profiles

function renderProfile(p: Profile): void {
  $("profile-name").textContent = p.displayName || p.username;
  $("profile-username").textContent = `@${p.username}${p.private ? " · 🔒 private" : ""}`;
  $("profile-bio").textContent = p.bio;
  $("profile-posts-count").textContent = String(p.postsCount);
  $("profile-followers").textContent = String(p.followersCount);
  $("profile-following").textContent = String(p.followingCount);
  $("profile-follows-you").hidden = !p.relationship.followedBy;
  const mine = p.username.toLowerCase() === host.me()?.username.toLowerCase();
  const follow = $<HTMLButtonElement>("follow-button");
  follow.hidden = mine;
  $("profile-message").hidden = mine;
  const { following, requested } = p.relationship;
  follow.dataset.following = String(following);
  follow.dataset.requested = String(requested);
  follow.textContent = following ? "Following" : requested ? "Requested" : "Follow";
  follow.title = following ? "Unfollow" : requested ? "Cancel the request" : "";
  follow.className = following || requested ? "secondary" : "";
}

async function loadProfile(username: string, more = false): Promise<void> {
  if (!more) {
    profile = await api<Profile>("GET", `/v1/users/${seg(username)}`);
    renderProfile(profile);
  }
  const list = $("profile-posts");
  try {
    const after = more && cursors.profile ? `&cursor=${seg(cursors.profile)}` : "";
    const page = await api<PostPage>("GET", `/v1/users/${seg(username)}/posts?limit=20${after}`);
    cursors.profile = page.nextCursor;
    renderPosts(list, page.posts, more, "No posts yet.");
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 403)) throw err;
    cursors.profile = null;
    list.replaceChildren(el("li", "hint", "This account is private: follow it to see its posts."));
  }
  $("profile-more").hidden = cursors.profile === null;
}

async function toggleFollow(button: HTMLButtonElement): Promise<void> {
  if (!profile || button.disabled) return;
  const { following, requested } = profile.relationship;
  button.disabled = true;
  clearError();
  try {
    await api(following || requested ? "DELETE" : "POST", `/v1/users/${seg(profile.username)}/follow`);
    // The counts and the relationship as the server has them now.
    profile = await api<Profile>("GET", `/v1/users/${seg(profile.username)}`);
    renderProfile(profile);
    if (!profile.private || profile.relationship.following) await loadProfile(profile.username);
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- threads

function commentItem(comment: CommentView, depth: number): HTMLLIElement {
  const li = el("li", "comment-item");
  li.dataset.commentId = comment.id;
  li.dataset.depth = String(Math.min(depth, 3));
  const head = el("div", "post-head");
  head.append(authorLink(comment.author), el("span", "time", when(comment.createdAt)));
  const body = el("div", "post-body");
  body.append(...richText(comment.content));
  const reply = el("button", "link reply", "Reply");
  reply.type = "button";
  reply.addEventListener("click", () => setReplyTo(comment));
  li.append(head, body, reply);
  return li;
}

/** Comments come in creation order, so a reply's parent is always placed before it. */
function appendComments(comments: CommentView[]): void {
  const list = $("comments");
  list.querySelector("li.hint")?.remove();
  for (const c of comments) {
    const parent = c.parentId ? list.querySelector<HTMLElement>(`li[data-comment-id="${c.parentId}"]`) : null;
    const depth = parent ? Number(parent.dataset.depth) + 1 : 0;
    // A reply goes after its parent's last descendant.
    let anchor: Element | null = parent;
    while (anchor?.nextElementSibling && Number((anchor.nextElementSibling as HTMLElement).dataset.depth) > Number(parent!.dataset.depth)) {
      anchor = anchor.nextElementSibling;
    }
    const item = commentItem(c, depth);
    if (anchor) anchor.after(item);
    else list.append(item);
  }
}

function setReplyTo(comment: CommentView | null): void {
  replyTo = comment;
  const label = $("reply-to");
  label.hidden = comment === null;
  label.textContent = comment ? `↳ @${comment.author.username} ✕` : "";
  if (comment) $("comment-text").focus();
}

async function loadThread(postId: string, more = false): Promise<void> {
  const after = more && cursors.comments ? `&cursor=${seg(cursors.comments)}` : "";
  const thread = await api<Thread>("GET", `/v1/posts/${seg(postId)}/thread?limit=50${after}`);
  threadPost = postId;
  cursors.comments = thread.nextCursor;
  $("thread-post").replaceChildren(postItem(thread.post));
  if (!more) {
    setReplyTo(null);
    $("comments").replaceChildren(el("li", "hint", "No comments yet."));
  }
  appendComments(thread.comments);
  $("comments-more").hidden = cursors.comments === null;
}

async function comment(form: HTMLFormElement): Promise<void> {
  if (!threadPost) return;
  const input = $<HTMLInputElement>("comment-text");
  const created = await api<CommentView>("POST", `/v1/posts/${seg(threadPost)}/comments`, {
    content: input.value,
    parentId: replyTo?.id,
  });
  // Older comments not loaded yet would come before it: only show it when the list is whole.
  if (cursors.comments === null) appendComments([created]);
  form.reset();
  setReplyTo(null);
  const post = posts.get(created.postId);
  if (post) updatePost({ ...post, commentsCount: post.commentsCount + 1 });
}

// ---------------------------------------------------------------- views and wiring

/** Shows a view of the social part (already visible: app.ts switched the tab). */
export async function showSocial(view: SocialView): Promise<void> {
  clearError();
  $("home-view").hidden = view.kind !== "home";
  $("profile-view").hidden = view.kind !== "profile";
  $("thread-view").hidden = view.kind !== "thread";
  try {
    if (view.kind === "home") await loadHome();
    else if (view.kind === "profile") await loadProfile(view.username);
    else await loadThread(view.postId);
  } catch (err) {
    showError(err instanceof ApiError && err.status === 404 ? new Error("Not found (or not visible to you).") : err);
  }
}

async function findPeople(query: string): Promise<void> {
  const results = $("user-results");
  results.replaceChildren();
  // An exact username goes straight to the profile; anything else is a search.
  if (/^[A-Za-z][A-Za-z0-9_]{2,31}$/.test(query)) {
    try {
      const exact = await api<Profile>("GET", `/v1/users/${seg(query)}`);
      location.hash = `#/users/${seg(exact.username)}`;
      return;
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) throw err;
    }
  }
  const page = await api<{ users: UserRef[] }>("GET", `/v1/search/users?q=${seg(query)}&limit=10`);
  if (!page.users.length) throw new Error(`No one found for “${query}”.`);
  results.replaceChildren(
    ...page.users.map((u) => {
      const li = el("li");
      li.append(authorLink(u), el("span", "handle", ` @${u.username}`));
      return li;
    }),
  );
}

function onSubmit(id: string, action: (form: HTMLFormElement) => Promise<void>, error: (err: Error) => void = showError): void {
  const form = $<HTMLFormElement>(id);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const button = form.querySelector<HTMLButtonElement>("button[type=submit]");
    if (button?.disabled) return;
    if (button) button.disabled = true;
    clearError();
    action(form)
      .catch(error)
      .finally(() => {
        if (button) button.disabled = false;
      });
  });
}

export function wireSocial(page: SocialHost): void {
  host = page;
  onSubmit("post-form", publish);
  onSubmit("comment-form", comment);
  onSubmit(
    "user-search",
    async (form) => {
      $("social-error").textContent = "";
      await findPeople(String(new FormData(form).get("q")).trim());
    },
    (err: Error) => ($("social-error").textContent = err.message),
  );
  $<HTMLTextAreaElement>("post-text").addEventListener("keydown", (event) => {
    // Ctrl/⌘ + Enter posts, as in most social apps; Enter alone is a new line.
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $<HTMLFormElement>("post-form").requestSubmit();
  });
  $("feed-refresh").addEventListener("click", () => void loadHome().catch(showError));
  $("feed-more").addEventListener("click", () => void loadHome(true).catch(showError));
  $("profile-more").addEventListener("click", () => profile && void loadProfile(profile.username, true).catch(showError));
  $("comments-more").addEventListener("click", () => threadPost && void loadThread(threadPost, true).catch(showError));
  $("follow-button").addEventListener("click", (event) => void toggleFollow(event.currentTarget as HTMLButtonElement));
  $("profile-message").addEventListener("click", () => profile && void host.chatWith(profile.username).catch(showError));
  $("reply-to").addEventListener("click", () => setReplyTo(null));
}
