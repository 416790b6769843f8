"""Synthesises the embedded demo corpus (`sslax/data/demo_corpus/`) with espeak-ng.

A small multi-speaker English read-speech corpus with word and phoneme alignments, made so
that every pipeline in sslax (pretraining, k-means units, CTC fine-tuning, CCA analysis)
can run end to end offline. Sentences come from a seeded probabilistic grammar over a
lexicon drawn from Debian's word list; speech comes from libespeak-ng (called through
ctypes, with phoneme events on) in 16 voices (accent x voice variant x rate/pitch/range),
12 for `train` and 2 each, unseen in `train`, for `dev` and `test`.

Alignments are espeak's own: each `espeakEVENT_WORD` gives a word's first sample, each
`espeakEVENT_PHONEME` a phoneme's first sample (espeak mnemonics, e.g. `aI@`). A word ends
where the next word or a pause phoneme (`_`, `_:`, ...) starts (running on while still
loud), then its trailing silence (5 ms frames below -40 dB of the utterance's loudest
frame) is trimmed. espeak sometimes speaks `in the` as one word; `THE` then starts at its
`D` phoneme. The phonemes of a
word tile it: the first starts at the word start, each ends where the next starts, the
last at the word end. All positions are samples at 16 kHz of the audio as soundfile
decodes it from the written Ogg Vorbis file.

Install (Debian/Ubuntu, as root):

  apt-get install espeak-ng wamerican-small

Regenerate (about 15 s on two cores; the metadata and decoded audio are deterministic
given --seed, espeak-ng 1.51 and the word list; the Ogg bytes differ in their random
stream serial numbers):

  python tools/make_demo_corpus.py --out sslax/data/demo_corpus --seed 0
"""

import argparse
import collections
import ctypes
import ctypes.util
import json
import os
import re
import shutil
import time

import numpy as np
import scipy.signal
import soundfile

SAMPLE_RATE = 16_000  # Hz, of the written corpus.
_ESPEAK_RATE = 22_050  # Hz, espeak-ng's native output rate.
_FRAME = 110  # samples at 22.05 kHz (5 ms), for silence trimming.
_SILENCE_DB = -40.0  # frames this far below the loudest frame count as silence.
_MIN_SECONDS, _MAX_SECONDS = 2.0, 10.0

# (split, espeak voice, rate in words/min, pitch 0-100, pitch range 0-100). The variants
# of `dev` and `test` are not used in `train`, so those speakers are unseen in training.
VOICES = (
  ("train", "en-us+m1", 165, 45, 55),
  ("train", "en-us+f2", 160, 55, 70),
  ("train", "en+m3", 150, 40, 50),
  ("train", "en+f1", 175, 60, 65),
  ("train", "en-gb-x-rp+m4", 155, 35, 45),
  ("train", "en-gb-scotland+f5", 170, 50, 60),
  ("train", "en-us-nyc+m6", 185, 50, 60),
  ("train", "en-029+m7", 160, 55, 75),
  ("train", "en-gb-x-gbclan+m8", 145, 45, 40),
  ("train", "en-gb-x-gbcwmd+f4", 165, 45, 55),
  ("train", "en-us+Michael", 175, 40, 50),
  ("train", "en+linda", 155, 50, 70),
  ("dev", "en-us+m2", 170, 40, 55),
  ("dev", "en-gb-x-rp+f3", 160, 55, 65),
  ("test", "en-us+m5", 150, 50, 50),
  ("test", "en+steph", 180, 50, 60),
)
SECONDS_PER_VOICE = {"train": 200.0, "dev": 150.0, "test": 150.0}

# ---------------------------------------------------------------------------------------
# libespeak-ng through ctypes (layouts from /usr/include/espeak-ng/speak_lib.h, API 12).
# ---------------------------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED, _EVENT_WORD, _EVENT_PHONEME = 0, 1, 7
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4


class _EventId(ctypes.Union):
  _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
  _fields_ = [
    ("type", ctypes.c_int),
    ("unique_identifier", ctypes.c_uint),
    ("text_position", ctypes.c_int),  # 1-based character index of the word.
    ("length", ctypes.c_int),
    ("audio_position", ctypes.c_int),  # ms
    ("sample", ctypes.c_int),  # samples at the native rate, from the start of the message.
    ("user_data", ctypes.c_void_p),
    ("id", _EventId),
  ]


_SynthCallback = ctypes.CFUNCTYPE(
  ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class Espeak:
  """libespeak-ng in synchronous retrieval mode, collecting audio and word/phoneme events."""

  def __init__(self):
    path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    self._lib = ctypes.CDLL(path)
    self._lib.espeak_Synth.argtypes = [
      ctypes.c_char_p,  # text
      ctypes.c_size_t,  # size
      ctypes.c_uint,  # position
      ctypes.c_int,  # position_type
      ctypes.c_uint,  # end_position
      ctypes.c_uint,  # flags
      ctypes.POINTER(ctypes.c_uint),  # unique_identifier
      ctypes.c_void_p,  # user_data
    ]
    self._lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    self._lib.espeak_Info.restype = ctypes.c_char_p
    rate = self._lib.espeak_Initialize(
      _AUDIO_OUTPUT_SYNCHRONOUS, 200, None, _INITIALIZE_PHONEME_EVENTS
    )
    if rate != _ESPEAK_RATE:
      raise RuntimeError(f"espeak_Initialize returned {rate}, expected {_ESPEAK_RATE} Hz")
    data_path = ctypes.c_char_p()
    self._lib.espeak_Info(ctypes.byref(data_path))
    self._variants = os.path.join(data_path.value.decode(), "voices", "!v")
    self._chunks = []
    self._events = []
    self._callback = _SynthCallback(self._on_synth)  # kept alive: C holds the pointer.
    self._lib.espeak_SetSynthCallback(self._callback)

  def _on_synth(self, wav, num_samples, events):
    if wav and num_samples > 0:
      self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
    i = 0
    while events[i].type != _EVENT_LIST_TERMINATED:
      event = events[i]
      # espeak also sends word events of length 0 with stale text positions (at clause
      # ends); they mark no word.
      if event.type == _EVENT_WORD and event.length > 0:
        self._events.append(("word", event.text_position - 1, event.sample))
      elif event.type == _EVENT_PHONEME:
        name = bytes(event.id.string).split(b"\0")[0].decode("utf-8")
        self._events.append(("phoneme", name, event.sample))
      i += 1
    return 0

  def synthesize(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int):
    """Speaks `text`.

    Returns:
      (wave int16[N] at 22.05 kHz, events): events in order, each `('word', char_offset,
      sample)` (0-based offset of the word in `text`) or `('phoneme', mnemonic, sample)`.
    """
    # An unknown variant falls back to the plain voice silently, so look for its file.
    _, _, variant = voice.partition("+")
    if variant and not os.path.isfile(os.path.join(self._variants, variant)):
      raise RuntimeError(f"espeak-ng has no voice variant {variant!r} in {self._variants}")
    if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
      raise RuntimeError(f"espeak-ng has no voice {voice!r}")
    for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range)):
      self._lib.espeak_SetParameter(param, value, 0)
    self._lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
    self._chunks, self._events = [], []
    data = text.encode("utf-8")
    err = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if err != 0 or self._lib.espeak_Synchronize() != 0:
      raise RuntimeError(f"espeak_Synth failed ({err}) on {text!r}")
    wave = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
    return wave, self._events


# ---------------------------------------------------------------------------------------
# Text: a probabilistic grammar over a lexicon from the word list.
# ---------------------------------------------------------------------------------------

# Kept out of the lexicon: slurs, sexual, violent and drug words (stems and whole words).
_BLOCKED_STEMS = tuple(
  """abort abus addict anal anus arse bastard bitch blood bomb boob bowel breast castrat
  chink cocain corpse cunt death dildo drown drug erot execut faggot feces fetus fuck
  genital gonorr harlot heroin horny incest kike kill knife lesbian lynch marijuan masturb
  massacr molest murder naked napalm nazi negro nigg nipple nude opium orgasm orgy penis
  pimp piss poison porn prostitut pubic pussy rapist rectum retard scrot semen sexual
  shit slaughter slave slut smut sodom sperm strangl suicid syphil testic tortur urin
  uter vagin virgin vomit weapon whore""".split()
)
_BLOCKED_WORDS = frozenset(
  """ass beat butt cock crap damn dead die dick dung dyke fag fart gay gun hang hell homo
  hump jew lust pube puss queer rape sex shoot stab teat tit wound""".split()
)
_IRREGULAR = tuple(
  (base, past, transitive)
  for transitive, pairs in (
    (
      True,
      """bring/brought build/built buy/bought catch/caught choose/chose draw/drew drive/drove
      eat/ate feed/fed find/found forget/forgot give/gave hear/heard hide/hid hold/held
      keep/kept know/knew lead/led leave/left lend/lent lose/lost make/made meet/met pay/paid
      read/read ride/rode see/saw sell/sold send/sent shake/shook sing/sang steal/stole
      sweep/swept take/took teach/taught tell/told throw/threw understand/understood
      wear/wore win/won write/wrote""",
    ),
    (
      False,
      """begin/began come/came fall/fell fly/flew go/went grow/grew run/ran sit/sat
      sleep/slept speak/spoke stand/stood swim/swam wake/woke""",
    ),
  )
  for base, past in (pair.split("/") for pair in pairs.split())
)
_PARTICIPLES = """given taken written known seen done gone hidden broken chosen spoken
  driven eaten fallen forgotten frozen grown ridden risen shaken stolen sworn thrown woken
  worn beaten bitten""".split()
_COMMON_ADJECTIVES = """big small old young new long short tall little great good bad
  red blue green yellow white black brown grey golden silver dark bright pale warm cold
  cool hot wet dry quiet loud soft hard heavy light empty full clean dirty rich poor happy
  sad angry calm busy lazy clever wise strange quick slow early late narrow wide deep
  shallow thick thin round flat sharp smooth rough sweet bitter fresh ripe wild gentle
  proud brave shy kind polite careful simple plain tiny huge ancient modern distant nearby
  famous hidden broken open closed lonely friendly curious patient honest eager nervous
  hungry thirsty tired sleepy cheerful fancy rusty dusty sandy muddy windy sunny rainy
  foggy snowy wooden stone""".split()
_NAMES = """anna thomas mary james helen arthur clara edward alice henry emma george lucy
  walter grace frank ruth robert martha david laura peter sarah john margaret charles
  elsa oliver nora samuel julia daniel rose victor irene hugo agnes simon esther felix
  olive leonard harriet ralph edith oscar mabel philip vera""".split()
_DET_SINGULAR = "the the the the a a this that every one my his her our their your each".split()
_DET_PLURAL = """the the the some many few two three four five six seven twelve these those
  my our their several""".split()
_PRONOUNS = (
  ("I", "me", 1),
  ("you", "you", 2),
  ("he", "him", 1),
  ("she", "her", 1),
  ("we", "us", 2),
  ("they", "them", 2),
  ("it", "it", 1),
)
_PREPOSITIONS = """in on under near behind beside across through over with without from
  into toward along around beyond past by inside outside above below between""".split()
_CONJUNCTIONS = "and and but so yet".split()
_SUBORDINATORS = """because while when although after before until since unless whenever
  as""".split()
_OPENERS = (
  """yesterday today tomorrow later then soon once afterwards meanwhile
  suddenly finally perhaps""".split()
  + [
    "at dawn",
    "at noon",
    "last night",
    "every morning",
    "in the evening",
    "after supper",
    "long ago",
    "that winter",
    "one summer",
    "by midnight",
    "all day",
    "in the end",
  ]
)
_MODALS = """could would should might must will can may didn't couldn't wouldn't won't
  can't shouldn't""".split()


def _blocked(word):
  return word in _BLOCKED_WORDS or word.startswith(_BLOCKED_STEMS)


def _function_words():
  """Words the grammar places itself, kept out of the content-word lists."""
  lists = (_DET_SINGULAR, _DET_PLURAL, _PREPOSITIONS, _CONJUNCTIONS, _SUBORDINATORS, _MODALS)
  words = {w.lower() for lst in lists for w in lst}
  words |= {w.lower() for pronoun in _PRONOUNS for w in pronoun[:2]}
  words |= {w for opener in _OPENERS for w in opener.split()}
  return words | set(
    """how who what why where which whom whose thou thee due pro con for nor ten eleven
    first second third fourth fifth sixth seventh eighth ninth tenth lot aside out up down
    off yes not upper outer inner else thing things yous hundred thousand million are is
    was were be been am has have had do does did most same just okay far way nay aye yuck
    yock lone""".split()
  )


def _past_tense(base, words):
  if base.endswith("e"):
    past = base + "d"
  elif re.search(r"[^aeiou]y$", base):
    past = base[:-1] + "ied"
  elif base + base[-1] + "ing" in words:
    past = base + base[-1] + "ed"
  else:
    past = base + "ed"
  return past if past in words else None


def _has_any(words, *forms):
  return any(f in words for f in forms)


def build_lexicon(wordlist_path: str, rng: np.random.Generator) -> dict:
  """Nouns, verbs, adjectives and adverbs guessed from inflections in a word list.

  A verb has a past tense, an -ing form and a third person in the list; a noun has a
  plural, no -ing form and no -ly adverb; an adjective has an -ly adverb and no plural.
  Content words have 3-9 letters and are ordered shorter first, loosely (`rng` breaks
  ties); the order sets the Zipf ranks used in sampling.

  Returns:
    {'noun': [(singular, plural)], 'verb': [(base, past, transitive)], 'adj': [str],
     'adv': [str]}.
  """
  with open(wordlist_path, encoding="utf-8") as f:
    words = {w for w in (line.strip() for line in f) if re.fullmatch(r"[a-z]+", w)}
  allowed = sorted(w for w in words if 3 <= len(w) <= 9 and not _blocked(w))
  irregular = {form for base, past, _ in _IRREGULAR for form in (base, past)}
  irregular |= set(_PARTICIPLES) | set(_COMMON_ADJECTIVES) | _function_words()
  verbs, nouns, adjs, advs = [], [], [], []
  for w in allowed:
    if w in irregular or w.endswith(("ed", "ing", "ly", "s")):
      continue
    stem = w[:-1] if w.endswith("e") else w
    past = _past_tense(w, words)
    has_ing = _has_any(words, w + "ing", stem + "ing", w + w[-1] + "ing")
    # Three-letter regular verbs are mostly nouns used as verbs (gap, hip, kid).
    is_verb = (
      len(w) > 3
      and past is not None
      and has_ing
      and _has_any(words, w + "s", w + "es", w[:-1] + "ies")
    )
    plural = next(
      (p for p in (w + "s", w + "es", w[:-1] + "ies" if w.endswith("y") else "") if p in words),
      None,
    )
    adverb = next(
      (
        a
        for a in (
          w[:-1] + "ily" if w.endswith("y") else w + "ly",
          w[:-1] + "y" if w.endswith("le") else "",
          w + "ally" if w.endswith("ic") else "",
        )
        if a in words and a + "s" not in words and a[:-1] + "ies" not in words and not _blocked(a)
      ),
      None,
    )
    if is_verb:
      verbs.append((w, past, True))
    elif plural is not None and adverb is None and not has_ing:
      nouns.append((w, plural))
    elif adverb is not None and plural is None:
      adjs.append(w)
      advs.append(adverb)
  # Shorter words first, loosely: a stand-in for frequency, which the list does not give.
  for lst in (verbs, nouns, adjs, advs):
    noise = rng.uniform(0.0, 4.0, size=len(lst))
    order = np.argsort(
      [len(x if isinstance(x, str) else x[0]) + n for x, n in zip(lst, noise, strict=True)]
    )
    lst[:] = [lst[i] for i in order]
  return {
    "noun": nouns,
    "verb": [(b, p, t) for b, p, t in _IRREGULAR] + verbs,
    "adj": _COMMON_ADJECTIVES + adjs,
    "adv": advs,
  }


class SentenceGenerator:
  """Draws sentences from a small probabilistic grammar.

  Content words are drawn with Zipf-like weights (rank^-0.8) over the lexicon order, so a
  few hundred words recur often and thousands appear now and then, as in read speech.
  """

  def __init__(self, lexicon: dict, rng: np.random.Generator):
    self._lex = lexicon
    self._rng = rng
    self._weights = {}
    for key, items in lexicon.items():
      w = np.arange(1, len(items) + 1, dtype=np.float64) ** -0.8
      self._weights[key] = w / w.sum()

  def _pick(self, items):
    return items[self._rng.integers(len(items))]

  def _word(self, key):
    items = self._lex[key]
    return items[self._rng.choice(len(items), p=self._weights[key])]

  def _chance(self, p):
    return self._rng.random() < p

  def _noun_phrase(self, role, depth=0):
    """Returns (words, plural?); role is 'subj' or 'obj'."""
    r = self._rng.random()
    if r < 0.08:
      subj, obj, number = self._pick(_PRONOUNS)
      return [subj if role == "subj" else obj], number == 2
    if r < 0.16:
      return [self._pick(_NAMES).capitalize()], False
    plural = self._chance(0.3)
    singular, plural_form = self._word("noun")
    if r < 0.24:
      owner = self._pick(_NAMES).capitalize() if self._chance(0.5) else self._word("noun")[0]
      words = [owner + "'s"] if owner[0].isupper() else ["the", owner + "'s"]
    else:
      words = [self._pick(_DET_PLURAL if plural else _DET_SINGULAR)]
    if self._chance(0.35):
      words.append(self._word("adj"))
    words.append(plural_form if plural else singular)
    if depth == 0 and self._chance(0.15):
      words += [self._pick(_PREPOSITIONS)] + self._noun_phrase("obj", depth + 1)[0]
    if words[0] == "a" and words[1][0] in "aeiou":
      words[0] = "an"
    return words, plural

  def _verb_phrase(self, plural):
    r = self._rng.random()
    base, past, transitive = self._word("verb")
    if r < 0.12:
      be = "were" if plural else "was"
      return [be] + (["not"] if self._chance(0.2) else []) + [self._word("adj")]
    if r < 0.27:
      words = [self._pick(_MODALS), base]
    else:
      words = [past]
    if transitive and self._chance(0.75):
      words += self._noun_phrase("obj")[0]
    if self._chance(0.3):
      words += [self._pick(_PREPOSITIONS)] + self._noun_phrase("obj", 1)[0]
    if self._chance(0.2):
      words.append(self._word("adv"))
    return words

  def _clause(self):
    subject, plural = self._noun_phrase("subj")
    return subject + self._verb_phrase(plural)

  def _question(self):
    subject, plural = self._noun_phrase("subj")
    r = self._rng.random()
    if r < 0.5:
      base, _, _ = self._word("verb")
      lead = [self._pick(["why", "where", "when", "how"])] if self._chance(0.5) else []
      rest = self._noun_phrase("obj")[0] if self._chance(0.7) else []
      return lead + ["did"] + subject + [base] + rest
    return ["were" if plural else "was"] + subject + [self._word("adj")]

  def sentence(self) -> str:
    """One sentence of 5-20 words, capitalised and punctuated."""
    while True:
      r = self._rng.random()
      if r < 0.1:
        words, end = self._question(), "?"
      elif r < 0.3:
        opener = self._pick(_OPENERS).split()
        words, end = opener + [","] + self._clause(), "."
      elif r < 0.5:
        words, end = self._clause() + [",", self._pick(_CONJUNCTIONS)] + self._clause(), "."
      elif r < 0.65:
        words, end = self._clause() + [self._pick(_SUBORDINATORS)] + self._clause(), "."
      else:
        words, end = self._clause(), "."
      if 5 <= sum(w != "," for w in words) <= 20:
        break
    text = " ".join(words).replace(" ,", ",") + end
    return text[0].upper() + text[1:]


def normalize(text: str) -> str:
  """LibriSpeech-style transcript: upper case letters, apostrophes and single spaces."""
  return " ".join(re.sub(r"[^A-Z' ]", " ", text.upper()).split())


# ---------------------------------------------------------------------------------------
# Alignment from espeak events.
# ---------------------------------------------------------------------------------------


# Words espeak may merge into the previous word's event, and the phoneme they start with.
_MERGED_FIRST_PHONEME = {"THE": "D"}


def _is_pause(name):
  return name.startswith("_")


def _is_marker(name):
  """Zero-duration markers espeak reports between phonemes (e.g. ';')."""
  return not any(c.isalnum() or c == "@" for c in name)


def _word_groups(events, num_samples):
  """Splits espeak's events into words: [char_offset, start, end, [[phoneme, start], ...]].

  A word runs from its word event to the next word event or pause phoneme.
  """
  groups = []
  closed = True
  for kind, value, sample in events:
    if kind == "word":
      if groups and not closed:
        groups[-1][2] = sample
      groups.append([value, sample, None, []])
      closed = False
    elif _is_pause(value):
      if groups and not closed:
        groups[-1][2] = sample
        closed = True
    elif not _is_marker(value) and groups and not closed:
      groups[-1][3].append([value, sample])
  if groups and not closed:
    groups[-1][2] = num_samples
  return groups


def _match_tokens(groups, tokens):
  """Pairs each (char_offset, word) token with its group, splitting merged words.

  espeak speaks some pairs as one dictionary entry with one word event (`in the`, `with
  the`); the second word then starts at the last occurrence of its first phoneme.

  Returns:
    [word, start, end, phonemes] per token, or None when they do not match.
  """
  out = []
  queue = list(groups)
  for offset, word in tokens:
    if queue and queue[0][0] == offset:
      _, start, end, phones = queue.pop(0)
      out.append([word, start, end, phones])
      continue
    first = _MERGED_FIRST_PHONEME.get(word)
    if first is None or not out:
      return None
    prev = out[-1]
    at = [i for i, (name, _) in enumerate(prev[3]) if name == first and i > 0]
    if not at:
      return None
    phones = prev[3][at[-1] :]
    out.append([word, phones[0][1], prev[2], phones])
    prev[2], prev[3] = phones[0][1], prev[3][: at[-1]]
  return None if queue else out


def align(text, wave, events):
  """Word and phoneme spans in native samples from espeak's events.

  Args:
    text: the spoken text (as given to espeak).
    wave: int16[N] at 22.05 kHz.
    events: from `Espeak.synthesize`.

  Returns:
    (words, phonemes): lists of [token, start, end) in samples at 22.05 kHz; the words are
    those of `normalize(text)`. None when the events do not match the text.
  """
  tokens = [(m.start(), normalize(m.group())) for m in re.finditer(r"\S+", text)]
  words = _match_tokens(_word_groups(events, len(wave)), [t for t in tokens if t[1]])
  if words is None:
    return None
  frames = len(wave) // _FRAME
  rms = np.sqrt(
    np.mean(wave[: frames * _FRAME].astype(np.float64).reshape(frames, _FRAME) ** 2, axis=1)
  )
  loud = rms > rms.max() * 10 ** (_SILENCE_DB / 20)
  word_spans, phone_spans = [], []
  for i, (word, start, end, phones) in enumerate(words):
    # Drop zero-length phonemes at the word end. A pause event can come a few ms before
    # the sound dies away: let the word run on while loud, up to the next word.
    phones = [p for p in phones if p[1] < end]
    if not phones:
      return None
    limit = words[i + 1][1] if i + 1 < len(words) else len(wave)
    while end // _FRAME < frames and loud[end // _FRAME] and end < limit:
      end = min((end // _FRAME + 1) * _FRAME, limit)
    # Then trim the word's trailing silence.
    last_start = max(phones[-1][1], start)
    last_loud = np.flatnonzero(loud[last_start // _FRAME : end // _FRAME])
    trimmed = (last_start // _FRAME + last_loud[-1] + 1) * _FRAME if last_loud.size else 0
    end = min(end, max(trimmed, last_start + _FRAME))
    word_spans.append([word, int(start), int(end)])
    phones[0][1] = start
    for i, (name, p_start) in enumerate(phones):
      p_end = phones[i + 1][1] if i + 1 < len(phones) else end
      if p_end > p_start:
        phone_spans.append([name, int(p_start), int(p_end)])
  return word_spans, phone_spans


# ---------------------------------------------------------------------------------------
# Corpus.
# ---------------------------------------------------------------------------------------


def _to_16k(sample):
  return int(round(sample * SAMPLE_RATE / _ESPEAK_RATE))


def make_utterance(espeak, text, voice, rng):
  """Synthesises one utterance with per-utterance jitter.

  Returns:
    (audio f32[N] in [-1, 1] at 16 kHz, words, phonemes) with spans in 16 kHz samples, or
    None when espeak's events do not align with the text.
  """
  _, name, rate, pitch, pitch_range = voice
  rate = int(round(rate * rng.uniform(0.94, 1.06)))
  pitch = int(np.clip(pitch + rng.integers(-4, 5), 0, 100))
  pitch_range = int(np.clip(pitch_range + rng.integers(-5, 6), 0, 100))
  wave, events = espeak.synthesize(text, name, rate, pitch, pitch_range)
  aligned = align(text, wave, events)
  if aligned is None:
    return None
  words, phones = aligned
  audio = scipy.signal.resample_poly(wave.astype(np.float64), SAMPLE_RATE, _ESPEAK_RATE)
  audio *= rng.uniform(0.3, 0.8) / max(np.abs(audio).max(), 1.0)
  # LibriSpeech-like margins of silence (0.15-0.6 s) before and after the speech.
  lead = int(rng.uniform(0.15, 0.6) * SAMPLE_RATE)
  tail = int(rng.uniform(0.15, 0.6) * SAMPLE_RATE)
  audio = np.concatenate([np.zeros(lead), audio, np.zeros(tail)])
  shift = [[t, _to_16k(s) + lead, _to_16k(e) + lead] for t, s, e in words]
  shift_ph = [[t, _to_16k(s) + lead, _to_16k(e) + lead] for t, s, e in phones]
  return audio.astype(np.float32), shift, shift_ph


def _write_ogg(path, audio):
  """Writes Ogg Vorbis and returns the length soundfile decodes back (samples)."""
  soundfile.write(path, audio, SAMPLE_RATE, format="OGG", subtype="VORBIS")
  decoded, rate = soundfile.read(path, dtype="int16")
  if rate != SAMPLE_RATE or decoded.ndim != 1:
    raise RuntimeError(f"{path}: decoded as {decoded.shape} at {rate} Hz")
  return len(decoded)


def _check_within(path, spans, num_samples):
  for token, start, end in spans:
    if not 0 <= start < end <= num_samples:
      raise RuntimeError(f"{path}: {token} [{start}, {end}) outside {num_samples} samples")
  return spans


def make_corpus(out_dir: str, wordlist: str, seed: int) -> dict:
  """Writes audio/{split}/*.ogg and {split}.jsonl under `out_dir`; returns stats."""
  root_rng = np.random.default_rng(seed)
  lexicon = build_lexicon(wordlist, root_rng)
  espeak = Espeak()
  seen = set()
  stats = collections.defaultdict(collections.Counter)
  rejected = 0
  records = collections.defaultdict(list)
  voice_seeds = np.random.SeedSequence(seed).spawn(len(VOICES))
  for speaker_id, (voice, voice_seed) in enumerate(zip(VOICES, voice_seeds, strict=True)):
    split, name, rate, pitch, pitch_range = voice
    rng = np.random.default_rng(voice_seed)
    generator = SentenceGenerator(lexicon, rng)
    os.makedirs(os.path.join(out_dir, "audio", split), exist_ok=True)
    seconds = 0.0
    while seconds < SECONDS_PER_VOICE[split]:
      text = generator.sentence()
      if rng.random() < 0.3:
        text += " " + generator.sentence()
      transcript = normalize(text)
      if transcript in seen or len(transcript.split()) > 26:
        continue
      made = make_utterance(espeak, text, voice, rng)
      if made is None:
        rejected += 1
        continue
      audio, words, phones = made
      if not _MIN_SECONDS <= len(audio) / SAMPLE_RATE <= _MAX_SECONDS:
        continue
      seen.add(transcript)
      utt_id = f"{speaker_id:02d}-{len(records[split]):04d}"
      path = os.path.join(out_dir, "audio", split, utt_id + ".ogg")
      num_samples = _write_ogg(path, audio)
      records[split].append(
        {
          "id": utt_id,
          "voice": f"{name} rate={rate} pitch={pitch} range={pitch_range}",
          "speaker_id": speaker_id,
          "text": transcript,
          "num_samples": num_samples,
          "words": _check_within(path, words, num_samples),
          "phonemes": _check_within(path, phones, num_samples),
        }
      )
      seconds += num_samples / SAMPLE_RATE
      stats[split]["seconds"] += num_samples / SAMPLE_RATE
      stats[split]["utterances"] += 1
    stats[split]["voices"] += 1
  for split, recs in records.items():
    with open(os.path.join(out_dir, f"{split}.jsonl"), "w", encoding="utf-8") as f:
      for rec in recs:
        f.write(json.dumps(rec, separators=(",", ":")) + "\n")
  vocabulary = {w for recs in records.values() for r in recs for w in r["text"].split()}
  return {
    "splits": {k: dict(v) for k, v in stats.items()},
    "vocabulary": len(vocabulary),
    "rejected": rejected,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="sslax/data/demo_corpus", help="corpus folder")
  parser.add_argument("--wordlist", default="/usr/share/dict/american-english-small")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  for split in SECONDS_PER_VOICE:  # Replace the audio, keep the package files.
    shutil.rmtree(os.path.join(args.out, "audio", split), ignore_errors=True)
  start = time.time()
  stats = make_corpus(args.out, args.wordlist, args.seed)
  print(json.dumps(stats, indent=2))
  print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
  main()
