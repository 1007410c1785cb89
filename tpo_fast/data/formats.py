"""Pair formats: one function per format turns a file's row into our pair fields.

Every reader returns ``{"video", "prompt", "chosen", "rejected", ["frames"], ["fps"],
["ref_logps"], ["system"], ...}`` (``parse_pair`` validates it) and raises ``ValueError``
naming the field. ``data.format=auto`` picks the format from the file's first row.

* ``tpo`` — our fields as they are: the JSONL the curator writes, the LLaVA-NeXT / TPO DPO JSON
  (``id``, ``video``, ``prompt`` with an ``<image>`` / ``<video>`` placeholder, ``chosen``,
  ``rejected``; LLaVA-NeXT ``llava/train/train_dpo.py``) and LLaVA-Hound-DPO's
  ``sft_dpo_17k.jsonl`` (the same fields plus ``answer``, ``chosen_score``,
  ``rejected_score``; its ``video`` names a folder of frames: LLaVA-Hound-DPO
  ``llava_hound_dpo/dpo_scripts/run_dpo.py``). ``llava_next`` and ``llava_hound`` are its
  names for those files.
* ``trl`` — TRL's preference format (TRL ``docs/source/dataset_formats.md``): ``prompt`` /
  ``chosen`` / ``rejected`` as strings (standard) or message lists (conversational:
  ``{"role", "content"}``, ``content`` a string or a list of parts ``{"type": "text",
  "text"}``, ``{"type": "image"}``, ``{"type": "video"}``), or ``chosen`` / ``rejected`` as
  whole conversations without ``prompt`` (implicit prompt: their shared leading messages).
  The video: a ``video`` part's own ``video`` / ``path`` / ``url``, else the ``videos`` column
  (one video), else ``video``, else the ``images`` column (or ``image``): the images are the
  video's frames, in order (TRL ``examples/datasets/rlaif-v.py`` stores them as a ``datasets``
  ``Sequence(Image)``, i.e. ``{"bytes", "path"}`` values in Parquet / Arrow).

A column mapping (``data.fields.*``) renames the file's columns to ours before the reader runs.
"""

from __future__ import annotations

from collections.abc import Callable

FIELDS = ("video", "prompt", "chosen", "rejected", "frames", "fps", "ref_logps")


def tpo_pair(row: dict) -> dict:
    return row


def _parts(content, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ValueError(f"{where}: 'content' must be a string or a list of parts, got "
                         f"{type(content).__name__}")
    parts = []
    for k, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise ValueError(f"{where}: content part {k} must be an object with a 'type'")
        parts.append(part)
    return parts


def _message(message, where: str) -> tuple[str, list[dict]]:
    if not isinstance(message, dict):
        raise ValueError(f"{where} must be a message object, got {type(message).__name__}")
    role = message.get("role")
    if not isinstance(role, str):
        raise ValueError(f"{where}: missing 'role'")
    if "content" not in message:
        raise ValueError(f"{where}: missing 'content'")
    return role, _parts(message["content"], where)


def _text(parts: list[dict], where: str, allow_media: bool = False) -> str:
    texts = []
    for part in parts:
        kind = part["type"]
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ValueError(f"{where}: a text part needs a string 'text'")
            texts.append(part["text"])
        elif not allow_media:
            raise ValueError(f"{where}: a response may hold only text parts, got {kind!r}")
        elif kind not in ("image", "video"):
            raise ValueError(f"{where}: unknown content part type {kind!r} (text, image, "
                             "video)")
    return "\n".join(t.strip() for t in texts if t.strip())


def _messages(row: dict, key: str) -> list:
    value = row.get(key)
    if value is None:
        raise ValueError(f"missing field {key!r}")
    if not isinstance(value, list) or not value:
        raise ValueError(f"field {key!r} must be a non-empty list of messages or a string")
    return value


def _response(row: dict, key: str, skip: int = 0) -> str:
    value = row.get(key)
    if isinstance(value, str):
        return value
    messages = _messages(row, key)[skip:]
    if len(messages) != 1:
        raise ValueError(f"field {key!r} must hold one assistant message after the prompt, got "
                         f"{len(messages)}")
    role, parts = _message(messages[0], f"field {key!r}[{skip}]")
    if role != "assistant":
        raise ValueError(f"field {key!r}[{skip}]: role must be 'assistant', got {role!r}")
    return _text(parts, f"field {key!r}[{skip}]")


def _prompt_messages(row: dict) -> tuple[list, int]:
    """The prompt's messages and how many leading messages of chosen/rejected they are."""
    if isinstance(row.get("prompt"), str):  # the standard format
        return [row["prompt"]], 0
    if row.get("prompt") is not None:
        return _messages(row, "prompt"), 0
    chosen, rejected = _messages(row, "chosen"), _messages(row, "rejected")
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise ValueError("missing field 'prompt' (and 'chosen' / 'rejected' share no leading "
                         "messages to take it from)")
    return chosen[:n], n


_MEDIA_KEYS = {"video": ("video", "path", "url"), "image": ("image", "path", "url")}


def _one_video(row: dict, video_parts: list[dict], n_images: int):
    inline = [next((p[k] for k in _MEDIA_KEYS["video"] if p.get(k) is not None), None)
              for p in video_parts]
    inline = [v for v in inline if v is not None]
    videos = row.get("videos")
    if videos is not None and not isinstance(videos, list):
        videos = [videos]
    if len(video_parts) > 1:
        raise ValueError(f"the prompt holds {len(video_parts)} videos; a pair has one video")
    if inline:
        return inline[0]
    if videos:
        if len(videos) != 1:
            raise ValueError(f"field 'videos' holds {len(videos)} videos; a pair has one video")
        return videos[0]
    if row.get("video") is not None:
        return row["video"]
    images = row.get("images")
    if images is None and row.get("image") is not None:
        images = [row["image"]]
    if images:
        if not isinstance(images, list):
            raise ValueError("field 'images' must be a list of images (the video's frames)")
        if video_parts:
            raise ValueError("the prompt has a video part but the row has only 'images'")
        return {"frames": images}
    if n_images:
        raise ValueError(f"the prompt has {n_images} image part(s) but the row has no 'images'")
    raise ValueError("no video: give a 'videos' (or 'video') column, a video content part with "
                     "its 'video' / 'path', or an 'images' column of frames")


def trl_pair(row: dict) -> dict:
    """TRL's preference row -> our fields (see the module docstring)."""
    messages, skip = _prompt_messages(row)
    system, question, video_parts, n_images = None, None, [], 0
    for k, message in enumerate(messages):
        where = f"field 'prompt'[{k}]" if skip == 0 else f"field 'chosen'[{k}]"
        if isinstance(message, str) and len(messages) == 1:  # standard format
            question = message
            continue
        role, parts = _message(message, where)
        if role == "system":
            system = _text(parts, where)
        elif role == "user":
            if question is not None:
                raise ValueError(f"{where}: a second user turn; only single-turn prompts "
                                 "(optionally after a system message) are supported")
            question = _text(parts, where, allow_media=True)
            video_parts = [p for p in parts if p["type"] == "video"]
            n_images = sum(p["type"] == "image" for p in parts)
        else:
            raise ValueError(f"{where}: role {role!r} in the prompt; only single-turn prompts "
                             "(optionally after a system message) are supported")
    if question is None:
        raise ValueError("field 'prompt' has no user message")
    out = {k: v for k, v in row.items()
           if k not in ("prompt", "chosen", "rejected", "images", "image", "videos")}
    out.update(prompt=question, chosen=_response(row, "chosen", skip),
               rejected=_response(row, "rejected", skip),
               video=_one_video(row, video_parts, n_images))
    if system:
        out["system"] = system
    return out


FORMATS: dict[str, Callable[[dict], dict]] = {
    "tpo": tpo_pair, "llava_next": tpo_pair, "llava_hound": tpo_pair, "trl": trl_pair,
}


def detect_format(row: dict) -> str:
    """``trl`` when the row holds messages (lists) or TRL's media columns, else ``tpo``."""
    if any(isinstance(row.get(k), list) for k in ("prompt", "chosen", "rejected")):
        return "trl"
    if ("images" in row or "videos" in row) and "video" not in row:
        return "trl"
    return "tpo"


def map_columns(row: dict, mapping: dict[str, str]) -> dict:
    """``row`` with each mapped column renamed to our field name (``data.fields.*``). A row that
    already has our field instead (e.g. a file ``ref-logps`` rewrote) is taken as it is."""
    mapping = {ours: column for ours, column in mapping.items()
               if not (column not in row and ours in row)}
    if not mapping:
        return row
    out = dict(row)
    for ours, column in mapping.items():
        if column not in row:
            raise ValueError(f"missing column {column!r} (data.fields.{ours}); the row has "
                             f"{', '.join(map(repr, row)) or 'no columns'}")
        out.pop(column, None)
    for ours, column in mapping.items():
        out[ours] = row[column]
    return out
