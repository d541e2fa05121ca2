#!/usr/bin/env python3
"""Golden PTB-tokenizer and CIDEr-D vectors for griffon-eval (pycocoevalcap semantics).

Writes, under eval/tests/fixtures/cider/:

  tokenizer.json   groups of captions, each group tokenized in ONE call (pycocoevalcap joins a
                   call's captions with newlines, so a caption's tokens may depend on the next
                   one). Per group: the captions, `raw` = the lines the Java tokenizer prints
                   (same jar and command line as pycocoevalcap's PTBTokenizer:
                   `PTBTokenizer -preserveLines -lowerCase <file>`), and `tokenized` = what
                   `pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer().tokenize` returns (raw
                   minus its punctuation list). Groups: hand-written edge cases (punctuation,
                   apostrophes / contractions, hyphens, numbers, capitals, brackets, quotes,
                   multiple spaces, unicode, abbreviations and their next-line context, URLs,
                   entities, emoji, Greek final sigma) and seeded random captions.
  <case>/refs.json, <case>/hyps.json and expected.json
                   CIDEr-D cases scored with pycocoevalcap's own pipeline, as COCOEvalCap runs
                   it: PTBTokenizer on the references (one call) and on the candidates (one
                   call), then `Cider().compute_score(gts, res)`. expected.json holds the corpus
                   score and the per-image scores (Python repr, round-trip exact).

Requires java (pycocoevalcap's tokenizer runs Stanford CoreNLP 3.4.1). Run from the repo root:
  /work/venv/bin/python tools/reference/make_cider_vectors.py

Differential check of the Rust tokenizer on a large input (nothing is written):
  cargo build -p griffon-eval --example ptb_lines
  /work/venv/bin/python tools/reference/make_cider_vectors.py --check-rust target/debug/examples/ptb_lines
compares the Java tokenizer's lines with the Rust ones on every Basic Multilingual Plane code
point in five contexts plus ~100,000 random captions and character soups, and prints the
number of differing lines (0 when this script was written).
"""
import json
import os
import random
import subprocess
import sys
import tempfile
from importlib.metadata import version

import pycocoevalcap.tokenizer.ptbtokenizer as ptbmod
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "eval", "tests", "fixtures", "cider")
JAR_DIR = os.path.dirname(os.path.abspath(ptbmod.__file__))


def java_raw_lines(captions):
    """The Java tokenizer's output lines, exactly as pycocoevalcap produces them, unfiltered."""
    sentences = "\n".join(c.replace("\n", " ") for c in captions)
    tmp = tempfile.NamedTemporaryFile(delete=False, dir=JAR_DIR)
    tmp.write(sentences.encode())
    tmp.close()
    cmd = ["java", "-cp", ptbmod.STANFORD_CORENLP_3_4_1_JAR, "edu.stanford.nlp.process.PTBTokenizer",
           "-preserveLines", "-lowerCase", os.path.basename(tmp.name)]
    out = subprocess.run(cmd, cwd=JAR_DIR, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.decode()
    os.remove(tmp.name)
    return out.split("\n")[: len(captions)]


def pycoco_tokenize(captions):
    """PTBTokenizer().tokenize on one image holding all captions (keeps their order)."""
    return PTBTokenizer().tokenize({"0": [{"caption": c} for c in captions]})["0"]


EDGE = [
    "A man riding a red bike.",
    "The man's hat (left).",
    "can't see U.S. flag",
    "3.5 inches & more...",
    "\"quoted\" word",
    "It's 10:30 -- now!",
    "left-most guy; far-right",
    "Giraffe's head -- far right",
    "tall giraffe (right)",
    "I'm sure they're here, aren't they? Yes we'll see; she'd've gone.",
    "don't DON'T won't can't cannot gonna wanna gotta lemme gimme 'tis 'twas",
    "the dog's bone, the dogs' bones and James' car",
    "rock'n'roll o'clock O'Neil y'all ma'am '90s 'til 'em 'cause",
    "A man     with   many\tspaces   ",
    "   leading spaces",
    "",
    "   ",
    "...",
    "?!",
    "- -- --- ---- ----- ------",
    "well-known T-shirt x-ray e-mail re-enter pro-life anti-war non-U.S. U.S.-based",
    "1 2 10 3.14 1,000 10:30 -5 +3 1/2 3/4 1 1/2 ½ ¼ ⅓ 12/25/2012 555-1234 (555) 123-4567",
    "1st 2nd 3D 4th x2 2x mp3 MP3s 24/7 50% 100%",
    "$5 US$10 €20 £3 ¢50 ¥100 # #1 @ @user #tag",
    "ALL CAPS SENTENCE HERE",
    "MiXeD CaSe WoRdS",
    "(round) [square] {curly} <angle> << >>",
    "-LRB- -RRB- -LSB- -RSB- -LCB- -RCB-",
    "'single' \"double\" `back` ``latex'' “curly” ‘curly’ «guillemets» „low“ ‹single›",
    "&amp; &quot; &apos; &lt; &gt; &nbsp; &eacute;t&eacute; &mdash; &#8212;",
    "<b>bold</b> <br/> <a href=\"x\">link</a>",
    "Mr. Smith met Dr. Jones and Mrs. Brown at St. Paul's Ave. in Jan. 2012.",
    "etc.",
    "The next line starts upper case",
    "etc.",
    "and this one lower case",
    "The U.S.",
    "The flag",
    "I.",
    "It is",
    "He is from the U.S. He lives in Calif. now.",
    "see fig. 3 and no. 5, ca. 1990, vs. them, Ph.D. student, a.k.a. bob",
    "Apple Inc. and Coca-Cola Co. Ltd. and Foo Corp.",
    "visit http://example.com/a?b=c or www.google.com or foo.org/x or mail a.b@example.com",
    "file.txt img.jpg report.pdf x.py",
    ":) :-) ;) :D :P =) ^_^ -_- (^_^) o_O :(",
    "c++ C# f# AT&T S&P R&D Q&A and/or km/h a/b/c w/ 3/4-inch",
    "café naïve résumé Ærøskøbing straße São Paulo",
    "İstanbul ΣΟΦΙΑ ΟΔΟΣ. σοφία ΑΣ1 Α-Σ ΑΣ-Β",
    "Москва 東京 中文字 日本語 한국어 עברית العربية हिन्दी ไทย",
    "emoji 😀 👍🏽 🐶 inside x😀y and 𝔸 math",
    "soft\u00adhyphen co\u00adop zero\u200bwidth \ufeffbom",
    "nbsp\u00a0space thin\u2009space ideo\u3000space",
    "control\u0001char del\u007fchar",
    "ellipsis… dash—em dash–en",
    "a.b A.B.C U.K. e.g. i.e. a.m. p.m.",
    "HELLO! Hi? ok... wow!!! yes--no well- -ish 5- 3. 3.14.",
    "A man riding a wave on top of a surfboard.",
    "Two dogs playing with a frisbee in the park .",
    "a kitchen with a stove , a sink , and a refrigerator",
]

PIECES = ["a", "A", "man", "Man", "MAN", "dog's", "dogs'", "can't", "won't", "I'm", "it's", "'s", "n't",
          "o'clock", "cannot", "gonna", "'tis", "etc.", "Mr.", "U.S.", "e.g.", "Inc.", "Jan.", "No.",
          "ca.", "The", "He", "It", "-", "--", "---", "_", "`", "``", "''", "'", "\"", "“", "”", "‘", "’",
          "(", ")", "[", "]", "{", "}", "<", ">", "<b>", ".", "...", "…", "?", "!", ",", ";", ":",
          "1", "10", "3.5", "1,000", "1/2", "½", "1 1/2", "555-1234", "$", "$5", "€", "£", "#1", "@u",
          "&", "&amp;", "&quot;", "%", "+", "=", "*", "/", "\\", "|", "^", "°", "×", "left-most",
          "e-mail", "AT&T", "and/or", "http://x.com/a", "www.y.org", "a@b.com", ":)", "^_^", "café",
          "ΣΟΦΙΑ", "Σ1", "Москва", "東京", "😀", "\u00ad", "\u200b", "\u00a0", "\u2009", "  ", "\t",
          "y'all", "'90s", "Cap'n", "c'est", "I.", "A.B.", "Calif.", "pty.", "co.", "ltd", "C.D.s"]


def random_captions(seed, n):
    r = random.Random(seed)
    out = []
    for _ in range(n):
        k = r.randint(1, 10)
        s = ""
        for i in range(k):
            s += r.choice(PIECES) + (r.choice([" ", " ", " ", "", "  "]) if i < k - 1 else "")
        if r.random() < 0.1:
            s = s.upper()
        out.append(s)
    return out


def random_chars(seed, n):
    r = random.Random(seed)
    alphabet = list("aAbBeEiIlLnNoOsStTyY019 .,;:!?'\"`-_()[]{}<>/\\@#$%&*+=~^|") + \
        ["&amp;", "&apos;", "http://", "www.", ".com", "'s", "n't", "’", "“", "—", "…", "\u00ad", "é", "Σ", "😀", "½"]
    return ["".join(r.choice(alphabet) for _ in range(r.randint(1, 20))) for _ in range(n)]


def unicode_sample():
    # A spread of code points, including the ones whose character class differs between the
    # lexer's Unicode 6.2 tables and current Unicode (U+1885, U+19B0.., U+1CF2, 7.0 letters).
    cps = [0x00C0, 0x00DF, 0x0130, 0x0149, 0x01C5, 0x02B0, 0x0301, 0x037E, 0x03A3, 0x0416, 0x05D0,
           0x0627, 0x0660, 0x06F0, 0x0840, 0x08A0, 0x08A1, 0x08AD, 0x0905, 0x0966, 0x0C34, 0x0E01,
           0x0E89, 0x10A0, 0x10FF, 0x1885, 0x1886, 0x19B0, 0x19C9, 0x19DA, 0x1CF2, 0x1E9E, 0x2160,
           0x2070, 0x00B9, 0x2080, 0x2153, 0x215E, 0x20AC, 0x20BA, 0x2028, 0x24B6, 0x3005, 0x3041,
           0x3095, 0x309D, 0x30A1, 0x30FC, 0x4E00, 0xA698, 0xAC00, 0xFF01, 0xFF21, 0xFFE5]
    out = []
    for cp in cps:
        c = chr(cp)
        if cp == 0x2028:
            continue  # a line separator would shift pycocoevalcap's lines (documented divergence)
        out += ["x%sy" % c, "1%s1" % c, "%s" % c, "Σ%sΣ" % c]
    return out


def tokenizer_groups():
    return [
        ("edge", EDGE),
        ("random_words", random_captions(20240314, 400)),
        ("random_chars", random_chars(7, 300)),
        ("unicode", unicode_sample()),
    ]


def cider_cases():
    r = random.Random(1234)
    subjects = ["A man", "a woman", "Two dogs", "The cat", "A young boy", "an old lady", "A group of people",
                "Some giraffes", "A red bus", "the baseball player"]
    verbs = ["riding", "holding", "sitting on", "standing next to", "looking at", "playing with", "eating",
             "walking down", "jumping over", "carrying"]
    objects = ["a bike", "a surfboard", "the street", "a frisbee", "a large pizza", "a wooden bench",
               "a kite", "the beach", "a laptop", "an umbrella"]
    extras = ["", ".", " in the park.", " on a sunny day", ", smiling!", " (left)", " near the water's edge.",
              " -- far right", " at 10:30"]

    def cap():
        return "%s %s %s%s" % (r.choice(subjects), r.choice(verbs), r.choice(objects), r.choice(extras))

    cases = {}
    refs = {}
    hyps = {}
    for i in range(40):
        iid = str(100000 + 7 * i)
        refs[iid] = [cap() for _ in range(5)]
        k = r.random()
        if k < 0.15:
            hyps[iid] = refs[iid][r.randrange(5)]
        elif k < 0.2:
            hyps[iid] = cap() + " " + cap()  # long: length penalty
        else:
            hyps[iid] = cap()
    cases["coco_like"] = (refs, hyps)
    cases["edge"] = ({
        "1": ["A man riding a red bike.", "The man on the left, wearing a hat!"],
        "2": ["Giraffe's head -- far right", "tall giraffe (right)", "tall giraffe (right)"],
        "3": ["the dog", "a brown dog lying down"],
        "4": ["two cats on a sofa", "Two cats sleeping on a couch."],
        "5": ["a plate of food", "food on a plate", "a dinner plate with food on it", "plate", "food"],
        "6": ["ΣΟΦΙΑ reads a book in São Paulo", "a woman reading 📚 outdoors"],
        "7": ["3 people at 10:30", "three people standing around at half past ten"],
    }, {
        "1": "a man riding a bike",
        "2": "giraffe on right",
        "3": "",
        "4": "two cats sleeping on a couch",
        "5": "...",
        "6": "a woman reading a book a woman reading a book a woman reading a book outdoors in the city",
        "7": "3 people",
    })
    cases["single_image"] = ({"only": ["a cat on a mat", "the cat sits on the mat"]}, {"only": "a cat on the mat"})
    return cases


def score_case(refs, hyps):
    gts = {k: [{"caption": c} for c in v] for k, v in refs.items()}
    res = {k: [{"caption": hyps[k]}] for k in refs}
    tok = PTBTokenizer()
    gts_t = tok.tokenize(gts)
    res_t = tok.tokenize(res)
    score, scores = Cider().compute_score(gts_t, res_t)
    return float(score), [float(s) for s in scores]


def main():
    os.makedirs(OUT, exist_ok=True)
    java = subprocess.run(["java", "-version"], stderr=subprocess.PIPE).stderr.decode().splitlines()[0]
    groups = []
    for name, caps in tokenizer_groups():
        raw = java_raw_lines(caps)
        tokenized = pycoco_tokenize(caps)
        assert len(raw) == len(caps) == len(tokenized), name
        for line, t in zip(raw, tokenized):
            filtered = " ".join(w for w in line.rstrip().split(" ") if w not in ptbmod.PUNCTUATIONS)
            assert filtered == t, (line, t)
        groups.append({"name": name, "captions": caps, "raw": raw, "tokenized": tokenized})
    with open(os.path.join(OUT, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump({"generator": "tools/reference/make_cider_vectors.py", "pycocoevalcap": version("pycocoevalcap"),
                   "java": java, "groups": groups}, f, ensure_ascii=False, indent=0)

    expected = {"generator": "tools/reference/make_cider_vectors.py", "pycocoevalcap": version("pycocoevalcap"),
                "numpy": version("numpy"), "java": java, "cases": {}}
    for name, (refs, hyps) in cider_cases().items():
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "refs.json"), "w", encoding="utf-8") as f:
            json.dump(refs, f, ensure_ascii=False, indent=0)
        with open(os.path.join(d, "hyps.json"), "w", encoding="utf-8") as f:
            json.dump(hyps, f, ensure_ascii=False, indent=0)
        score, scores = score_case(refs, hyps)
        expected["cases"][name] = {"refs": name + "/refs.json", "hyps": name + "/hyps.json", "cider": score,
                                   "per_image": dict(zip(refs.keys(), scores))}
        print(name, score)
    # The same references and candidates as `coco_like`, in the list-of-entries file shape with
    # numeric ids (the score must not change).
    refs, hyps = cider_cases()["coco_like"]
    d = os.path.join(OUT, "coco_like_list")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "refs.json"), "w", encoding="utf-8") as f:
        json.dump([{"image_id": int(k), "caption": c} for k, v in refs.items() for c in v], f, indent=0)
    with open(os.path.join(d, "hyps.json"), "w", encoding="utf-8") as f:
        json.dump([{"image_id": int(k), "caption": hyps[k]} for k in refs], f, indent=0)
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)


def check_rust(binary):
    skip = {0x0A, 0x0D, 0x0B, 0x0C, 0x2028, 0x2029}  # line breaks: a documented divergence
    lines = []
    for cp in range(0x20, 0x10000):
        if 0xD800 <= cp <= 0xDFFF or cp in skip:
            continue
        c = chr(cp)
        lines += ["x%sy" % c, "1%s1" % c, c, "%sx" % c, "\u03a3%s\u03a3" % c]
    for seed in range(10):
        lines += random_captions(1000 + seed, 5000) + random_chars(2000 + seed, 5000)
    r = random.Random(3)
    sigma = list("\u03a3\u03c3\u0391\u039f\u039b") + list("aA1 .-'_,%$&\"") + ["\u0301", "\u200b", "\u00b2", "\u00ad", "\u4e2d", "\u309d"]
    lines += ["".join(r.choice(sigma) for _ in range(r.randint(1, 10))) for _ in range(20000)]
    java = java_raw_lines(lines)
    rust = subprocess.run([binary], input="\n".join(lines).encode(), stdout=subprocess.PIPE,
                          check=True).stdout.decode().split("\n")[: len(lines)]
    bad = [(a, j, k) for a, j, k in zip(lines, java, rust) if j != k]
    for a, j, k in bad[:20]:
        print(repr(a), "\n  java", repr(j), "\n  rust", repr(k))
    print("lines", len(lines), "differing", len(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check-rust":
        sys.exit(check_rust(sys.argv[2]))
    main()
