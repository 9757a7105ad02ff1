// Media in the chat: what a media message shows (an image's BlurHash placeholder, then its
// thumbnail; a player for audio and video; a download link for files) and the short line the
// conversation list previews it with. Links come from `GET /v1/media/{id}/info` (signed, short-
// lived): fetched once per media and page load, and again when they have expired.

import { decodeBlurhash, type HaberciClient, type MediaInfo, type MediaView, type MessageType } from "../sdk/src/index.js";
import { el } from "./api.js";

/** The placeholder's size: BlurHash has a few components, so a few pixels say everything. */
const PLACEHOLDER_PX = 32;
/** The longest side a thumbnail is shown at, in CSS pixels. */
const SHOWN_PX = 240;

const views = new Map<string, Promise<MediaView>>();
/** One node per media: re-rendering a conversation moves it instead of loading it again. */
const nodes = new Map<string, HTMLElement>();

/** Fresh links for `id` (cached until a minute before they expire). */
function viewOf(client: HaberciClient, id: string): Promise<MediaView> {
  let view = views.get(id);
  if (!view) {
    view = client.mediaInfo(id);
    views.set(id, view);
    view.then(
      (v) => setTimeout(() => views.delete(id), Math.max(0, Date.parse(v.linksExpireAt) - Date.now() - 60_000)),
      () => views.delete(id),
    );
  }
  return view;
}

/** Remembers an upload just made, so that its own message shows without asking again. */
export function rememberUpload(view: MediaView): void {
  views.set(view.id, Promise.resolve(view));
}

/** "🖼 Photo", "🎤 Voice message 0:07", "📄 report.pdf" — the conversation list's preview. */
export function mediaPreview(type: MessageType, media: MediaInfo | undefined, caption: string): string {
  if (caption) return caption;
  switch (type) {
    case "image":
      return "🖼 Photo";
    case "video":
      return "🎬 Video";
    case "audio":
      return `🎤 Audio${media?.durationMs ? ` ${duration(media.durationMs)}` : ""}`;
    default:
      return `📄 ${media?.filename ?? "File"}`;
  }
}

function duration(ms: number): string {
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** "12.3 KB" */
export function byteSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KB", "MB", "GB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** The shown size of an image or video: its own, scaled to fit `SHOWN_PX`. */
function shownSize(media: MediaInfo): { width: number; height: number } {
  const w = media.width ?? SHOWN_PX;
  const h = media.height ?? SHOWN_PX;
  const scale = Math.min(1, SHOWN_PX / Math.max(w, h));
  return { width: Math.max(1, Math.round(w * scale)), height: Math.max(1, Math.round(h * scale)) };
}

/** The BlurHash painted on a canvas (a grey box when there is none or it does not decode). */
function placeholder(media: MediaInfo): HTMLCanvasElement {
  const canvas = el("canvas", "media-placeholder");
  const { width, height } = shownSize(media);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  canvas.width = PLACEHOLDER_PX;
  canvas.height = Math.max(1, Math.round((PLACEHOLDER_PX * height) / width));
  const context = canvas.getContext("2d");
  if (context && media.blurhash) {
    try {
      const pixels = decodeBlurhash(media.blurhash, canvas.width, canvas.height);
      context.putImageData(new ImageData(pixels, canvas.width, canvas.height), 0, 0);
    } catch {
      // A hash this page cannot read: the grey box of the stylesheet.
    }
  }
  return canvas;
}

/** What a media message shows, above its caption. */
export function mediaNode(client: HaberciClient, type: MessageType, media: MediaInfo): HTMLElement {
  const known = nodes.get(media.mediaId);
  if (known) return known;
  const box = el("div", `media media-${type}`);
  box.dataset.media = media.mediaId;
  nodes.set(media.mediaId, box);
  const failed = (err: Error) => {
    box.append(el("div", "media-error", `⚠ ${err.message}`));
  };
  if (type === "image" || type === "video") {
    const canvas = placeholder(media);
    box.append(canvas);
    viewOf(client, media.mediaId).then((view) => {
      const size = shownSize(media);
      if (type === "image") {
        const img = el("img", "media-thumb");
        img.alt = media.filename ?? "photo";
        img.width = size.width;
        img.height = size.height;
        // Shown once loaded, so the placeholder stays until there is something better.
        img.addEventListener("load", () => canvas.replaceWith(img), { once: true });
        img.addEventListener("error", () => failed(new Error("the image did not load")), { once: true });
        img.src = view.thumbUrl ?? view.previewUrl ?? view.url;
        img.addEventListener("click", () => void viewOf(client, media.mediaId).then((v) => window.open(v.url, "_blank", "noopener")));
      } else {
        const video = el("video", "media-video");
        video.controls = true;
        video.preload = "metadata";
        video.width = size.width;
        video.height = size.height;
        if (view.thumbUrl) video.poster = view.thumbUrl;
        video.src = view.url;
        canvas.replaceWith(video);
      }
    }, failed);
  } else if (type === "audio") {
    viewOf(client, media.mediaId).then((view) => {
      const audio = el("audio", "media-audio");
      audio.controls = true;
      audio.preload = "metadata";
      audio.src = view.url;
      box.append(audio);
    }, failed);
  } else {
    const link = el("a", "media-file", `📄 ${media.filename ?? "file"} (${byteSize(media.sizeBytes)})`);
    link.download = media.filename ?? "";
    link.href = "#";
    // The signed link is fetched when asked for: it would have expired by the time someone
    // clicks an old message.
    link.addEventListener("click", (event) => {
      event.preventDefault();
      viewOf(client, media.mediaId).then((view) => {
        const a = el("a");
        a.href = view.url;
        a.download = media.filename ?? "";
        a.click();
      }, failed);
    });
    box.append(link);
  }
  return box;
}
